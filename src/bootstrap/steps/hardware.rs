//! Step 2, `hardware`: when the VM runs NixOS, its hardware configuration
//! (`nixos-generate-config --show-hardware-config`, over the public address with the pinned key)
//! and boot loader, written to `hosts/<node>/hardware-configuration.nix` and `hosts/<node>/boot.nix`.

use crate::bootstrap::report::{fail, BootstrapError, Status, Step};
use crate::bootstrap::run::{ssh_target, Run};
use crate::exec::ssh::{SshTarget, SshTransport, Transport};
use crate::model::{Fleet, NodeName};
use std::time::Duration;

/// What the VM prints for the hardware step: `nixos-generate-config --show-hardware-config`, a
/// separator line, then its boot loader (`efi`, or `bios <disk>`). Exit 3: not NixOS.
const HARDWARE_SCRIPT: &str = r#"set -eu
. /etc/os-release 2>/dev/null || true
if [ "${ID:-}" != nixos ]; then echo "not NixOS (ID=${ID:-unknown})"; exit 3; fi
nixos-generate-config --show-hardware-config
echo '#### fleetnix boot loader'
if [ -d /sys/firmware/efi ]; then echo efi; else
  disk=$(lsblk -no pkname "$(findmnt -no SOURCE /)" 2>/dev/null | head -n 1 || true)
  echo "bios /dev/${disk:-vda}"
fi
"#;

/// The separator line of [`HARDWARE_SCRIPT`]'s output.
const BOOT_MARKER: &str = "#### fleetnix boot loader";

/// `hosts/<node>/boot.nix` for the boot loader the VM reported (`efi` or `bios /dev/<disk>`).
fn boot_module(node: &NodeName, reported: &str) -> Option<String> {
    let head = format!(
        "# Boot loader of {node}, as fleetnix bootstrap found it on the VM ({reported}); `nixos-generate-config`\n# leaves it to configuration.nix, so it lives here, next to hardware-configuration.nix.\n"
    );
    let body = match reported.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["efi"] => "{\n  boot.loader.systemd-boot.enable = true;\n  boot.loader.efi.canTouchEfiVariables = true;\n}\n".to_string(),
        ["bios", disk]
            if disk.starts_with("/dev/")
                && disk[5..]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_/".contains(c)) =>
        {
            format!(
                "{{\n  boot.loader.grub.enable = true;\n  boot.loader.grub.device = {};\n}}\n",
                crate::nix::string(disk)
            )
        }
        _ => return None,
    };
    Some(head + &body)
}

/// Reads and writes the hardware configuration; `pinned` is the host key, `in_tailnet`: the node
/// is in the tailnet already (then it is not contacted over its public address).
pub(crate) async fn run(
    run: &mut Run<'_>,
    fleet: &Fleet,
    pinned: &str,
    in_tailnet: bool,
) -> Result<(), BootstrapError> {
    let opts = run.opts;
    let name = &run.name.clone();
    let resume = run.resume.clone();
    let root = &opts.deploy.root;
    let rel = crate::manifest::hosts::hardware_path(name);
    let node = fleet
        .node(name.as_str())
        .ok_or_else(|| BootstrapError::Setup("node vanished".into()))?;
    if !crate::manifest::hosts::may_run_nixos(node) {
        run.finish(
            Step::Hardware,
            Status::Skipped,
            "os: linux: no NixOS configuration".to_string(),
        );
        return Ok(());
    }
    if root.join(&rel).is_file() {
        run.finish(
            Step::Hardware,
            Status::Unchanged,
            format!("{} exists", rel.display()),
        );
        return Ok(());
    }
    if in_tailnet {
        run.finish(
            Step::Hardware,
            Status::Skipped,
            format!(
                "the node is already in the tailnet, so it is not contacted over its public address: write {} with `{}`",
                rel.display(),
                crate::manifest::hosts::generate_command(node)
            ),
        );
        return Ok(());
    }
    let err = |e: String| fail(Step::Hardware, e, format!("fix the cause, then {resume}"));
    let pin = opts.public_pin(name);
    let known = crate::deploy::hostkeys::known_hosts(&opts.address, &[pinned.to_string()]);
    crate::fsutil::write_atomic_in_repo(&opts.deploy.root, &pin, known.as_bytes(), 0o644)
        .map_err(|e| err(format!("{}: {e}", pin.display())))?;
    let target = SshTarget {
        destination: ssh_target(&opts.ssh_user, &opts.address),
        known_hosts: pin,
        sudo: crate::spec::needs_sudo(&opts.ssh_user),
        control: None,
    };
    let transport = SshTransport {
        config: opts.deploy.ssh.clone(),
    };
    let timeout = Duration::from_secs(u64::from(opts.deploy.ssh.connect_timeout) + 60);
    let out = Transport::run(
        &transport,
        &target,
        HARDWARE_SCRIPT,
        None,
        timeout,
        &run.log,
    )
    .await
    .map_err(|e| err(e.to_string()))?;
    if out.code == Some(3) {
        run.finish(
            Step::Hardware,
            Status::Skipped,
            format!(
                "the VM is {}: once it runs NixOS, write {} with `{}`",
                out.stdout.trim(),
                rel.display(),
                crate::manifest::hosts::generate_command(node)
            ),
        );
        return Ok(());
    }
    if !out.success() {
        return Err(err(format!(
            "`nixos-generate-config --show-hardware-config` on {} failed: {}",
            opts.address,
            out.last_line()
        )));
    }
    let (hardware, boot) = out
        .stdout
        .split_once(&format!("{BOOT_MARKER}\n"))
        .ok_or_else(|| err("the VM's answer has no boot loader line".into()))?;
    crate::nix::check_syntax(hardware).map_err(|e| {
        err(format!(
            "the VM's hardware configuration is not valid Nix ({}); nothing was written",
            e.join("; ")
        ))
    })?;
    let boot = boot_module(name, boot.trim()).ok_or_else(|| {
        err(format!(
            "the VM reported an unknown boot loader `{}`; nothing was written",
            boot.trim().escape_debug()
        ))
    })?;
    let boot_rel = rel.with_file_name("boot.nix");
    for (path, text) in [(&boot_rel, boot.as_str()), (&rel, hardware)] {
        // boot.nix is only written along a new hardware configuration; an existing one is kept.
        if path == &boot_rel && root.join(path).exists() {
            continue;
        }
        let full = root.join(path);
        crate::fsutil::write_atomic_in_repo(root, &full, text.as_bytes(), 0o644)
            .map_err(|e| err(format!("{}: {e}", full.display())))?;
    }
    run.finish(
        Step::Hardware,
        Status::Done,
        format!(
            "{} and {} written from the VM (`nixos-generate-config --show-hardware-config`); commit them",
            rel.display(),
            boot_rel.display()
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_loader_modules_are_nix_and_refuse_odd_disks() {
        let n = NodeName::parse("vm-01").unwrap();
        let efi = boot_module(&n, "efi").unwrap();
        assert!(efi.contains("boot.loader.systemd-boot.enable = true;"));
        let bios = boot_module(&n, "bios /dev/vda").unwrap();
        assert!(bios.contains("boot.loader.grub.device = \"/dev/vda\";"));
        for text in [&efi, &bios] {
            crate::nix::check_syntax(text).unwrap();
        }
        for odd in [
            "bios /dev/$(id)",
            "bios /etc/passwd",
            "bios",
            "uefi",
            "bios /dev/vda x",
            "",
        ] {
            assert_eq!(boot_module(&n, odd), None, "{odd}");
        }
    }
}
