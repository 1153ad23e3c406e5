//! The node lock's takeover of an expired lock is atomic: of several deploys taking it over at
//! once, exactly one wins (issue 21 finding 3). The guard's real lock script runs in `sh` on a
//! local directory standing in for `/run/fleetnix`; its `systemctl` questions are answered by
//! whatever systemctl this machine has (no rollback unit of the stale owner runs here).

use fleetnix::deploy::guard::{lock_script, release_fn, GuardId, RUN_DIR};
use std::process::{Command, Stdio};
use std::time::Duration;

const ROUNDS: usize = 200;

/// The lock script of a new deploy, working in `dir` instead of `/run/fleetnix`, printing `won`
/// once it holds the lock.
fn script(dir: &std::path::Path, id: &GuardId) -> String {
    let s = lock_script(id, Duration::from_secs(30));
    assert!(s.contains(RUN_DIR), "{s}");
    format!(
        "{}\necho won",
        s.replace(RUN_DIR, &dir.display().to_string())
    )
}

#[test]
fn concurrent_takeovers_of_an_expired_lock_have_exactly_one_winner() {
    let base = tempfile::tempdir().expect("tmp");
    let mut double = Vec::new();
    for round in 0..ROUNDS {
        let contenders = 2 + round % 3;
        let dir = base.path().join(format!("r{round}"));
        // A lock left by a deploy that vanished: expired long ago.
        std::fs::create_dir_all(dir.join("lock")).expect("lock");
        std::fs::write(dir.join("lock/owner"), "gone-1 1000\n").expect("owner");
        let ids: Vec<GuardId> = (0..contenders).map(|_| GuardId::new()).collect();
        let children: Vec<_> = ids
            .iter()
            .map(|id| {
                Command::new("sh")
                    .args(["-c", &script(&dir, id)])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("sh")
            })
            .collect();
        let mut winners = Vec::new();
        for (id, child) in ids.iter().zip(children) {
            let out = child.wait_with_output().expect("sh ran");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                assert_eq!(stdout.trim(), "won", "{stderr}");
                winners.push(id.as_str().to_string());
            } else {
                assert!(
                    stderr.contains("holds the lock")
                        || stderr.contains("taking over")
                        || stderr.contains("took it first"),
                    "a loser says why: {stderr}"
                );
            }
        }
        if winners.len() != 1 {
            double.push((round, winners.len()));
            continue;
        }
        let owner = std::fs::read_to_string(dir.join("lock/owner")).expect("owner");
        assert_eq!(
            owner.split_whitespace().next(),
            Some(winners[0].as_str()),
            "round {round}: the lock names its winner"
        );
    }
    assert!(
        double.is_empty(),
        "rounds without exactly one winner (round, winners): {double:?}"
    );
}

#[test]
fn a_live_lock_is_never_taken_over() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(dir.path().join("lock")).expect("lock");
    let far = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    std::fs::write(dir.path().join("lock/owner"), format!("live-1 {far}\n")).expect("owner");
    let out = Command::new("sh")
        .args(["-c", &script(dir.path(), &GuardId::new())])
        .output()
        .expect("sh");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("another fleetnix deploy (live-1) holds the lock"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("lock/owner")).expect("owner"),
        format!("live-1 {far}\n")
    );
}

/// A deploy that outlived its lock's expiry releases it while another deploy takes it over
/// (issue 21 finding 3's remaining window): the release never removes the taker's lock. Either
/// the release wins (the lock is gone, the taker refused and says why) or the taker does (the
/// lock is the taker's, the release left it).
#[test]
fn a_late_release_never_removes_a_lock_taken_over_since() {
    let base = tempfile::tempdir().expect("tmp");
    let mut lost = Vec::new();
    let (mut released, mut taken) = (0, 0);
    for round in 0..ROUNDS {
        let dir = base.path().join(format!("r{round}"));
        std::fs::create_dir_all(dir.join("lock")).expect("lock");
        // The slow deploy's own lock, expired.
        std::fs::write(dir.join("lock/owner"), "slow-1 1000\n").expect("owner");
        let release = format!(
            "I=slow-1\n{}\nrelease",
            release_fn("").replace(RUN_DIR, &dir.display().to_string())
        );
        let taker = GuardId::new();
        let children: Vec<_> = [release, script(&dir, &taker)]
            .iter()
            .map(|s| {
                Command::new("sh")
                    .args(["-c", s])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("sh")
            })
            .collect();
        let outs: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output().expect("sh ran"))
            .collect();
        let took = outs[1].status.success();
        let owner = std::fs::read_to_string(dir.join("lock/owner")).ok();
        if took {
            taken += 1;
            // The taker holds the lock: it must still be there, and its own.
            if owner.as_deref().and_then(|o| o.split_whitespace().next()) != Some(taker.as_str()) {
                lost.push((round, owner));
            }
        } else {
            released += 1;
            let stderr = String::from_utf8_lossy(&outs[1].stderr);
            assert!(
                stderr.contains("taking over")
                    || stderr.contains("took it first")
                    || stderr.contains("holds the lock"),
                "the refused taker says why: {stderr}"
            );
        }
    }
    assert!(
        lost.is_empty(),
        "a taker's lock removed by the late release (round, owner left): {lost:?}"
    );
    println!("{ROUNDS} rounds: the release won {released}, the taker {taken}");
}

/// The release's claim, step by step: once a taker has claimed the takeover of the expired lock
/// (and is about to replace it), the late deploy's release leaves the lock alone; without a
/// claim, it releases its own lock (and only its own).
#[test]
fn a_release_leaves_a_lock_whose_takeover_is_claimed() {
    let dir = tempfile::tempdir().expect("tmp");
    let dir = dir.path();
    let release = |who: &str| {
        let s = format!(
            "I={who}\n{}\nrelease",
            release_fn("").replace(RUN_DIR, &dir.display().to_string())
        );
        assert!(Command::new("sh")
            .args(["-c", &s])
            .status()
            .expect("sh")
            .success());
    };
    std::fs::create_dir_all(dir.join("lock")).expect("lock");
    std::fs::write(dir.join("lock/owner"), "slow-1 1000\n").expect("owner");
    // Another deploy's release: not its lock.
    release("other-1");
    assert!(dir.join("lock/owner").exists());
    // A taker claimed the takeover: the late release leaves the lock to it.
    std::fs::create_dir(dir.join("takeover-slow-1-1000")).expect("claim");
    release("slow-1");
    assert!(
        dir.join("lock/owner").exists(),
        "the claimed lock was removed"
    );
    // No claim (a lock of another expiry): its owner's release removes it.
    std::fs::write(dir.join("lock/owner"), "slow-1 2000\n").expect("owner");
    release("slow-1");
    assert!(!dir.join("lock").exists());
}
