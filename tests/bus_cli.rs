//! `fleetnix dispatch` end to end against a real nats-server on loopback.

mod bus_support;
mod common;

use bus_support::{Behaviour, NatsServer};
use common::{example_fleet, fleetnix_bin, repo};
use fleetnix::bus::users::Service;
use std::process::Output;
use std::time::Duration;

/// Runs the fleetnix binary on the example fleet; the password only ever goes through `env`.
async fn fleetnix(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(fleetnix_bin());
    cmd.arg("--root")
        .arg(repo())
        .args(args)
        .env_remove("FLEETNIX_NATS_PASSWORD")
        .env_remove("FLEETNIX_NATS_URL")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("fleetnix dispatch finished within 30 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_prints_the_reply_of_a_node_of_the_role() {
    let server = NatsServer::start(&example_fleet());
    let worker = server
        .worker("worker-01", "kg-writer", Behaviour::Answer)
        .await;
    // --direct does the router's job from this process: the router's user and password.
    let password = server
        .service_password(Service::Router)
        .expose()
        .to_string();
    let args = [
        "dispatch",
        "--direct",
        "--role",
        "kg-writer",
        "--payload",
        r#"{"doc": "a.md"}"#,
        "--timeout",
        "2s",
        "--nats-url",
        &server.url,
    ];
    assert!(!args.iter().any(|a| a.contains(&password)));
    let out = fleetnix(&args, &[("FLEETNIX_NATS_PASSWORD", &password)]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["node"], "worker-01");
    assert_eq!(reply["task"]["doc"], "a.md");
    // Straight to the queue group, the name is only what the worker says.
    assert!(
        stderr.contains(
            "answered by worker-01 (as claimed by the worker, unverified) (1 attempt(s))"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains(&password));
    assert_eq!(worker.count(), 1);

    // The same through a password file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    let mut with_file = args.to_vec();
    with_file.extend(["--password-file", file.to_str().unwrap()]);
    let out = fleetnix(&with_file, &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(worker.count(), 2);

    // The same, decrypted in memory from secrets/control-01/nats-router-password.age with --identity.
    let root = tempfile::tempdir().unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(root.path().join("fleet")).unwrap();
    for f in ["nodes.yml", "fleet.yml", "services.yml"] {
        std::fs::copy(
            repo.join("fleet").join(f),
            root.path().join("fleet").join(f),
        )
        .unwrap();
    }
    let identity = dir.path().join("ops.age");
    let keygen = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&identity)
        .output()
        .expect("age-keygen");
    assert!(keygen.status.success());
    let text = std::fs::read_to_string(&identity).unwrap();
    let recipient = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("public key line")
        .to_string();
    let secret = root
        .path()
        .join("secrets/control-01/nats-router-password.age");
    std::fs::create_dir_all(secret.parent().unwrap()).unwrap();
    let mut age = std::process::Command::new("age")
        .args(["-r", &recipient, "-o"])
        .arg(&secret)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("age");
    std::io::Write::write_all(&mut age.stdin.take().unwrap(), password.as_bytes()).unwrap();
    assert!(age.wait().unwrap().success());
    let mut with_identity = args.to_vec();
    with_identity.extend(["--identity", identity.to_str().unwrap()]);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetnix"))
        .arg("--root")
        .arg(root.path())
        .args(&with_identity)
        .env_remove("FLEETNIX_NATS_PASSWORD")
        .env_remove("FLEETNIX_NATS_URL")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains(&password));
    assert_eq!(worker.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_fails_clearly_and_never_echoes_secrets() {
    let server = NatsServer::start(&example_fleet());
    let base = ["dispatch", "--role", "kg-writer", "--payload", "{}"];
    let url_args = |extra: &[&str]| {
        let mut v: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |v: Vec<String>, env: Vec<(&'static str, String)>| async move {
        let args: Vec<&str> = v.iter().map(|s| s.as_str()).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        fleetnix(&args, &env).await
    };
    let password = server
        .service_password(Service::Supervisor)
        .expose()
        .to_string();
    let router_password = server
        .service_password(Service::Router)
        .expose()
        .to_string();
    let url = server.url.clone();

    // No password at all.
    let out = run(url_args(&["--nats-url", &url]), vec![]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("FLEETNIX_NATS_PASSWORD"));

    // Credentials in the URL are refused, and not repeated.
    let bad_url = url.replace("nats://", "nats://control-01:embeddedpw@");
    let out = run(
        url_args(&["--nats-url", &bad_url]),
        vec![("FLEETNIX_NATS_PASSWORD", password.clone())],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("carries credentials") && !stderr.contains("embeddedpw"));

    // A wrong password: authorization fails, the password is not in the message.
    let wrong = format!("Wrong{}", "x".repeat(30));
    let out = run(
        url_args(&["--nats-url", &url]),
        vec![("FLEETNIX_NATS_PASSWORD", wrong.clone())],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(!stderr.contains(&wrong));

    // No router runs: exit 1 at once, saying so.
    let out = run(
        url_args(&["--nats-url", &url]),
        vec![("FLEETNIX_NATS_PASSWORD", password.clone())],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no router answers on fleet.dispatch.kg-writer"),
        "{stderr}"
    );

    // Nobody serves the role (without the router): exit 1 quickly, naming each attempt.
    let out = run(
        url_args(&["--direct", "--nats-url", &url, "--timeout", "500ms"]),
        vec![("FLEETNIX_NATS_PASSWORD", router_password.clone())],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no node answered the `kg-writer` task after 2 attempt(s)"),
        "{stderr}"
    );

    // Bad input is rejected before connecting.
    let out = run(
        vec![
            "dispatch".into(),
            "--role".into(),
            "no-such-role".into(),
            "--payload".into(),
            "{}".into(),
        ],
        vec![],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("roles with nodes: control-plane"));
    let out = run(
        vec![
            "dispatch".into(),
            "--role".into(),
            "kg-writer".into(),
            "--payload".into(),
            "{not json".into(),
        ],
        vec![],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_goes_through_a_running_fleetnix_router() {
    let server = NatsServer::start(&example_fleet());
    let registry = server.connect_registry().await;
    fleetnix::bus::registry::sync(&async_nats::jetstream::new(registry), &example_fleet())
        .await
        .unwrap();
    // The router binary, its password only in its environment.
    let router_pw = server.creds.router_password().unwrap().expose().to_string();
    // ntfy on loopback: the nodes that never heart-beat go down after three timeouts and the
    // router alerts (never the example fleet's own ntfy address).
    let ntfy = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let ntfy_url = format!("http://{}", ntfy.server_addr().to_ip().unwrap());
    let mut router = server
        .router_command(&ntfy_url)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut worker = server
        .worker("worker-01", "kg-writer", Behaviour::Answer)
        .await;
    worker.heartbeat("worker-01", Duration::from_millis(100), &[]);
    // The supervisors' user, the default.
    let password = server
        .service_password(Service::Supervisor)
        .expose()
        .to_string();
    let args = [
        "dispatch",
        "--role",
        "kg-writer",
        "--payload",
        r#"{"doc": "b.md"}"#,
        "--nats-url",
        &server.url,
        "--timeout",
        "3s",
    ];
    // Until the router has started and heard a heartbeat it answers an error: poll, bounded.
    let out = common::poll_async(Duration::from_secs(15), || async {
        let out = fleetnix(&args, &[("FLEETNIX_NATS_PASSWORD", &password)]).await;
        out.status.success().then_some(out)
    })
    .await
    .expect("dispatch through the router succeeded within 15 s");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["task"]["doc"], "b.md");
    assert!(
        stderr.contains("answered by worker-01 (1 attempt(s), through the router)"),
        "{stderr}"
    );
    assert!(!stderr.contains(&password));
    assert!(worker.count() >= 1);
    // control-01 never sends a heartbeat: down after 3 s, one urgent alert.
    let alert = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(mut req)) = ntfy.recv_timeout(Duration::from_millis(200)) {
                let title = req
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("X-Title"))
                    .map(|h| h.value.to_string())
                    .unwrap_or_default();
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                let _ = req.respond(tiny_http::Response::from_string("{}"));
                if title.contains("control-01") {
                    return Some((title, body));
                }
            }
        }
        None
    })
    .await
    .unwrap();
    let (title, body) = alert.expect("an ntfy alert for control-01 within 15 s");
    assert_eq!(title, "fleetnix: control-01 is down");
    assert!(body.contains("no heartbeat"), "{body}");
    router.kill().await.unwrap();
    let mut log = String::new();
    use tokio::io::AsyncReadExt;
    router
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    assert!(log.contains("router: serving fleet.dispatch.>"), "{log}");
    assert!(!log.contains(&router_pw));
}
