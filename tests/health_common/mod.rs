//! Shared helpers of the `health_*` tests (next to `common`, which each of them declares too):
//! small fleets written to a temp dir, tailnet states and health reports built in code, loopback
//! listeners (open, closed, silent) and a tiny ntfy stand-in.
#![allow(dead_code)]

use crate::common::{nodes_yaml, FleetSettings, NodeSpec};
use fleetnix::health::{HealthReport, NodeHealth, NodeState, Presence};
use fleetnix::model::{Fleet, NodeName};
use fleetnix::tailscale::{PeerStatus, TailscaleStatus};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// A node for [`write_fleet`] (8 GB of RAM).
pub struct N<'a> {
    pub name: &'a str,
    pub ip: &'a str,
    pub roles: &'a [&'a str],
    pub cpu: u32,
}

impl<'a> N<'a> {
    /// A node with 4 CPUs.
    pub fn new(name: &'a str, ip: &'a str, roles: &'a [&'a str]) -> Self {
        N {
            name,
            ip,
            roles,
            cpu: 4,
        }
    }

    /// The same with `cpu` CPUs.
    pub fn cpu(self, cpu: u32) -> Self {
        N { cpu, ..self }
    }
}

/// Writes nodes.yml, fleet.yml, services.yml into `dir` and loads them. The first node is
/// the control plane (it must list `control-plane`). `services`: (name, port, role).
pub fn write_fleet(
    dir: &Path,
    nodes: &[N],
    services: &[(&str, u16, &str)],
    timeout_secs: u32,
    strategy: &str,
) -> Fleet {
    std::fs::create_dir_all(dir).unwrap();
    let mut roles: Vec<&str> = nodes.iter().flat_map(|n| n.roles.iter().copied()).collect();
    roles.sort_unstable();
    roles.dedup();
    let specs: Vec<NodeSpec> = nodes
        .iter()
        .map(|n| NodeSpec {
            cpu: n.cpu,
            ram_gb: 8,
            ..NodeSpec::new(n.name, n.ip, n.roles)
        })
        .collect();
    std::fs::write(dir.join("nodes.yml"), nodes_yaml(&specs)).unwrap();
    let mut s = String::from("default_tag: tag:worker\nroles:\n");
    for r in &roles {
        if *r == "control-plane" {
            s += "  control-plane:\n    tag: tag:control-plane\n";
        } else {
            s += &format!("  {r}:\n    description: test role\n");
        }
    }
    s += "services:\n";
    for (name, port, role) in services {
        s += &format!(
            "  - name: {name}\n    port: {port}\n    role: {role}\n    allow: [tag:worker]\n"
        );
    }
    if services.is_empty() {
        s = s.replace("services:\n", "services: []\n");
    }
    std::fs::write(dir.join("services.yml"), s).unwrap();
    let settings = FleetSettings {
        control_plane: nodes[0].name,
        nats_url: None,
        timeout_secs,
        retry: true,
        strategy,
        alert_on_node_down: true,
    };
    std::fs::write(dir.join("fleet.yml"), settings.yaml()).unwrap();
    match fleetnix::manifest::load(dir) {
        Ok(f) => f,
        Err(e) => panic!("test fleet invalid: {e:?}"),
    }
}

/// A report with these node states (at 127.0.0.1, online; a down node says why).
pub fn report(states: &[(&str, NodeState)]) -> HealthReport {
    HealthReport {
        nodes: states
            .iter()
            .map(|(n, s)| NodeHealth {
                name: NodeName::parse(n).unwrap(),
                address: IpAddr::from([127, 0, 0, 1]),
                presence: Presence::Online,
                state: *s,
                probes: vec![],
                reason: (*s == NodeState::Down).then(|| "offline in the tailnet".to_string()),
                router: None,
            })
            .collect(),
        router_view: Default::default(),
    }
}

/// A tailnet in which `online` nodes are online and `offline` ones offline (first online one is `Self`).
pub fn tailnet(fleet: &Fleet, online: &[&str], offline: &[&str]) -> TailscaleStatus {
    let mut st = TailscaleStatus {
        backend_state: "Running".into(),
        ..Default::default()
    };
    let mut first = true;
    for n in &fleet.nodes {
        let name = n.name.as_str();
        let is_on = online.contains(&name);
        if !is_on && !offline.contains(&name) {
            continue;
        }
        let p = PeerStatus {
            host_name: name.to_string(),
            dns_name: format!("{name}.tail0000.ts.net."),
            tailscale_ips: vec![n.tailscale_ip],
            tags: fleet.tags_of(n),
            online: is_on,
            ..Default::default()
        };
        if first && is_on {
            st.self_ = p;
            first = false;
        } else {
            st.peer.insert(format!("nodekey:{name}"), p);
        }
    }
    st
}

/// A listener that accepts (and drops) every connection, on `ip` (port chosen by the OS unless given).
pub async fn open_listener(ip: IpAddr, port: u16) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind(SocketAddr::new(ip, port))
        .await
        .unwrap();
    let addr = l.local_addr().unwrap();
    let h = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    });
    (addr, h)
}

/// A port on `ip` where nothing listens (connections are refused).
pub fn closed_port(ip: IpAddr) -> u16 {
    let l = std::net::TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
    l.local_addr().unwrap().port()
}

/// A "silent" listener: backlog 0 and its one queue slot taken, so a new connect's SYN is
/// dropped by the kernel and the connect hangs until the caller's timeout, all on loopback.
pub struct Silent {
    pub addr: SocketAddr,
    _listener: tokio::net::TcpListener,
    _filler: std::net::TcpStream,
}

/// Makes a [`Silent`] listener on `ip` (port chosen by the OS unless given).
pub fn silent_listener(ip: IpAddr, port: u16) -> Silent {
    let sock = if ip.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .unwrap();
    sock.bind(SocketAddr::new(ip, port)).unwrap();
    let listener = sock.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let filler = std::net::TcpStream::connect(addr).unwrap();
    Silent {
        addr,
        _listener: listener,
        _filler: filler,
    }
}

/// A request the ntfy stand-in received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names lowercased.
    pub headers: std::collections::BTreeMap<String, String>,
    pub body: String,
}

/// A minimal HTTP/1.1 server standing in for ntfy: records each request; answers the first
/// `fail_first` requests with 503 and later ones with 200 and an ntfy-shaped JSON body.
pub struct NtfyStub {
    pub addr: SocketAddr,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    /// Requests answered 200.
    pub delivered: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl NtfyStub {
    /// Starts on 127.0.0.1.
    pub async fn start(fail_first: usize) -> NtfyStub {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let delivered = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (rx, dx) = (received.clone(), delivered.clone());
        let task = tokio::spawn(async move {
            let mut n = 0usize;
            while let Ok((s, _)) = l.accept().await {
                let mut r = BufReader::new(s);
                let mut line = String::new();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or("").to_string();
                let path = parts.next().unwrap_or("").to_string();
                let mut headers = std::collections::BTreeMap::new();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).await.unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let len: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                r.read_exact(&mut body).await.unwrap();
                let req = Received {
                    method,
                    path,
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                };
                rx.lock().unwrap().push(req.clone());
                let (status, text) = if n < fail_first {
                    (
                        "503 Service Unavailable",
                        r#"{"code":50301,"http":503,"error":"unavailable"}"#.to_string(),
                    )
                } else {
                    dx.lock().unwrap().push(req);
                    ("200 OK", r#"{"id":"hwQ2YpKdmg","time":1735689600,"event":"message","topic":"fleet-alerts","message":"x"}"#.to_string())
                };
                n += 1;
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
                let mut s = r.into_inner();
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
        NtfyStub {
            addr,
            received,
            delivered,
            _task: task,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
