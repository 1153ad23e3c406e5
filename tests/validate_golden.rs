//! Golden outputs of `fleetnix validate` on broken copies of the example fleet: the exact
//! exit code and stderr (the grep-friendly line and miette's snippet of every problem),
//! compared byte for byte with `tests/golden/validate/<case>.stderr`.
//!
//! The files were produced by the code before the manifest layer was split, so a refactor that
//! changes any message, position, suggestion or ordering fails here. To re-create them after an
//! intended change: `FLEETNIX_UPDATE_GOLDEN=1 cargo test --test validate_golden`, then review
//! the diff.

mod common;

use common::{example_fleet_dir, fleetnix_bin, repo};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One broken fleet: `(file, from, to)` replacements applied to the example fleet's files.
struct Case {
    name: &'static str,
    edits: &'static [(&'static str, &'static str, &'static str)],
}

const CASES: &[Case] = &[
    Case {
        name: "unknown_field",
        edits: &[(
            "nodes.yml",
            "    roles: [glm-worker, kg-writer]\n",
            "    rolse: [glm-worker, kg-writer]\n",
        )],
    },
    Case {
        name: "bad_ip",
        edits: &[
            (
                "nodes.yml",
                "tailscale_ip: 100.64.0.2",
                "tailscale_ip: 10.0.0.2",
            ),
            (
                "nodes.yml",
                "tailscale_ip: 100.64.0.3",
                "tailscale_ip: 100.64.0.x",
            ),
        ],
    },
    Case {
        name: "duplicate_name_and_ip",
        edits: &[
            (
                "nodes.yml",
                "  - name: worker-02\n",
                "  - name: worker-01\n",
            ),
            (
                "nodes.yml",
                "tailscale_ip: 100.64.0.3",
                "tailscale_ip: 100.64.0.2",
            ),
        ],
    },
    Case {
        name: "unknown_role",
        edits: &[(
            "nodes.yml",
            "[glm-worker, kg-writer]",
            "[glm-worker, kg-writter, nothing-like-it]",
        )],
    },
    Case {
        name: "bad_host_key",
        edits: &[
            (
                "nodes.yml",
                "\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJQjeAs7RT6f33ippn",
                "\"ssh-dss AAAAC3NzaC1lZDI1NTE5AAAAIJQjeAs7RT6f33ippn",
            ),
            (
                "nodes.yml",
                "AAAAIAuFQ702geJVhTV3TyceW8jbbpbf7WPIHdgKZ186FlVq demo",
                "AAAA!AuFQ702geJVhTV3TyceW8jbbpbf7WPIHdgKZ186FlVq demo",
            ),
            (
                "nodes.yml",
                "demo-only-do-not-use-control-01\"",
                "demo-only-do-not-use-control-01 $(id)\"",
            ),
        ],
    },
    Case {
        name: "bad_tags",
        edits: &[
            (
                "services.yml",
                "default_tag: tag:worker",
                "default_tag: worker",
            ),
            (
                "services.yml",
                "tag: tag:control-plane\n",
                "tag: tag:Control_Plane\n",
            ),
            (
                "services.yml",
                "allow: [tag:control-plane]\n",
                "allow: [tag:nobody]\n",
            ),
        ],
    },
    Case {
        name: "bad_nats_url",
        edits: &[(
            "fleet.yml",
            "nats_url: nats://100.64.0.1:4222",
            "nats_url: tls://100.64.0.1:4222",
        )],
    },
    Case {
        name: "bad_nats_port",
        edits: &[(
            "fleet.yml",
            "nats_url: nats://100.64.0.1:4222",
            "nats_url: nats://100.64.0.1:0",
        )],
    },
    Case {
        name: "bad_ssh_login",
        edits: &[
            (
                "nodes.yml",
                "  - name: worker-01\n",
                "  - name: worker-01\n    ssh_user: Deploy@host\n",
            ),
            (
                "nodes.yml",
                "  - name: worker-02\n",
                "  - name: worker-02\n    ssh_user: \"-rf\"\n",
            ),
        ],
    },
    Case {
        name: "bad_operator_login",
        edits: &[(
            "fleet.yml",
            "members: [ops@example.com]",
            "members: [ops, \"a b@example.com\"]",
        )],
    },
    Case {
        name: "unknown_control_plane_and_strategy",
        edits: &[
            (
                "fleet.yml",
                "control_plane: control-01",
                "control_plane: control-1",
            ),
            (
                "fleet.yml",
                "failover_strategy: round_robin",
                "failover_strategy: least-loaded",
            ),
        ],
    },
    Case {
        name: "unknown_service_role_and_group",
        edits: &[
            (
                "services.yml",
                "    role: temporal\n",
                "    role: temporl\n",
            ),
            (
                "services.yml",
                "allow: [group:operators]",
                "allow: [group:admins]",
            ),
        ],
    },
    Case {
        name: "wrong_types",
        edits: &[
            ("nodes.yml", "      cpu: 8\n", "      cpu: eight\n"),
            (
                "fleet.yml",
                "retry_on_node_failure: true",
                "retry_on_node_failure: yes",
            ),
            ("fleet.yml", "port: 8090", "port: 70000"),
        ],
    },
    Case {
        name: "unknown_control_plane",
        edits: &[(
            "fleet.yml",
            "control_plane: control-01",
            "control_plane: control-1",
        )],
    },
    Case {
        name: "unknown_group",
        edits: &[(
            "services.yml",
            "allow: [group:operators]",
            "allow: [group:admins]",
        )],
    },
    Case {
        name: "allow_tag_of_no_role",
        edits: &[(
            "services.yml",
            "allow: [tag:control-plane]\n",
            "allow: [tag:nobody, \"tag:x y\", wheel]\n",
        )],
    },
    Case {
        name: "bad_nats_host",
        edits: &[(
            "fleet.yml",
            "nats_url: nats://100.64.0.1:4222",
            "nats_url: \"nats://-bad host:4222\"",
        )],
    },
    Case {
        name: "malformed_yaml",
        edits: &[(
            "nodes.yml",
            "roles: [glm-worker, kg-writer]",
            "roles: [glm-worker, kg-writer",
        )],
    },
];

fn golden_dir() -> PathBuf {
    repo().join("tests/golden/validate")
}

/// Runs `fleetnix validate` on the example fleet with `edits` applied; returns the golden text.
fn run(case: &Case) -> String {
    let root = tempfile::tempdir().unwrap();
    let fleet = root.path().join("fleet");
    // Verbatim, host keys included (common::copy_example_fleet strips them).
    std::fs::create_dir_all(&fleet).unwrap();
    for f in ["nodes.yml", "fleet.yml", "services.yml"] {
        std::fs::copy(example_fleet_dir().join(f), fleet.join(f)).unwrap();
    }
    for (file, from, to) in case.edits {
        let path = fleet.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(from),
            "case {}: {file} has no {from:?}",
            case.name
        );
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }
    let before = common::snapshot(root.path());
    // A relative root keeps the temp directory's name out of the output.
    let out = Command::new(fleetnix_bin())
        .current_dir(root.path())
        .args(["--root", ".", "validate"])
        .env_remove("FLEETNIX_FLEET_DIR")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(
        common::snapshot(root.path()),
        before,
        "case {}: validate wrote something",
        case.name
    );
    assert!(
        out.stdout.is_empty(),
        "case {}: {}",
        case.name,
        String::from_utf8_lossy(&out.stdout)
    );
    format!(
        "exit: {}\n{}",
        out.status.code().map_or("signal".into(), |c| c.to_string()),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn check(case: &Case, dir: &Path) {
    let got = run(case);
    let path = dir.join(format!("{}.stderr", case.name));
    if std::env::var_os("FLEETNIX_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (FLEETNIX_UPDATE_GOLDEN=1 creates it)",
            path.display()
        )
    });
    assert!(
        got == want,
        "case {}: validate's output differs from {}\n--- want\n{want}\n--- got\n{got}",
        case.name,
        path.display()
    );
}

#[test]
fn validate_errors_match_the_golden_files() {
    let dir = golden_dir();
    for case in CASES {
        check(case, &dir);
    }
}

#[test]
fn every_golden_file_has_a_case_and_fails_with_exit_1() {
    if std::env::var_os("FLEETNIX_UPDATE_GOLDEN").is_some() {
        return; // the other test is writing them
    }
    let names: Vec<String> = CASES.iter().map(|c| format!("{}.stderr", c.name)).collect();
    let mut files: Vec<String> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut want = names.clone();
    want.sort();
    assert_eq!(files, want, "stale or missing golden files");
    for n in &names {
        let text = std::fs::read_to_string(golden_dir().join(n)).unwrap();
        assert!(text.starts_with("exit: 1\n"), "{n}");
        assert!(
            text.contains("problem(s) in the fleet files; nothing was written"),
            "{n}"
        );
    }
}
