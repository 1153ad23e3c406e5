//! Bus credentials: one random password per node, kept as age secrets like the auth key.
//!
//! Layout (paths relative to the repository root; encryption is `fleetnix::secrets`' job):
//! - `secrets/<node>/nats-password.age`: the node's password, the bare string. Readers: that node
//!   (its agent gets it as `services.omp-agent.natsCredentialsFile`) and the operators.
//! - `secrets/<control-plane>/nats-server-env.age`: a systemd environment file with one
//!   `NATS_PASSWORD_<NODE>=<password>` line per node, which the control plane's nats-server unit
//!   loads (`EnvironmentFile=`) so the configuration can say `password: $NATS_PASSWORD_<NODE>`.
//!   Readers: the control plane and the operators. It also holds `NATS_<SERVICE>_PASSWORD=…`,
//!   the passwords of the control plane's services ([`super::users`]).
//! - `secrets/<control-plane>/nats-router-password.age`: the router's password (user `_router`),
//!   which the router service on the control plane gets as a systemd credential;
//!   `nats-supervisor-password.age` (user `_supervisor`, the supervisors) and
//!   `nats-registry-password.age` (user `_registry`, `node sync`) likewise. Readers: the control
//!   plane and the operators.
//!
//! Passwords are 40 characters of `[A-Za-z0-9]` starting with a letter (about 238 bits): nothing to
//! escape in an environment file, and nats-server — which parses a variable's value as a config
//! value — reads them as plain strings (a leading digit could make one a number).

use super::users::Service;
use super::{BusError, ServerPlan};
use crate::model::NodeName;
use crate::secret::Secret;
use crate::spec::secrets::{SecretId, SecretKind};
use crate::spec::secrets::{PASSWORD_SECRET, SERVER_ENV_SECRET};
use rand::Rng;
use std::collections::BTreeMap;

/// Length of a generated password.
pub const PASSWORD_LEN: usize = 40;

/// `NATS_PASSWORD_<NODE>`: the node name upper-cased with `-` as `_` (node names have no `_`, so
/// distinct nodes get distinct variables).
pub fn password_var(node: &NodeName) -> String {
    format!(
        "NATS_PASSWORD_{}",
        node.as_str().to_ascii_uppercase().replace('-', "_")
    )
}

/// `secrets/<node>/nats-password.age`.
pub fn password_file(node: &NodeName) -> String {
    SecretId::new(node.clone(), SecretKind::NatsPassword).age_path()
}

/// `secrets/<control-plane>/nats-server-env.age`.
pub fn server_env_file(control_plane: &NodeName) -> String {
    SecretId::new(control_plane.clone(), SecretKind::NatsServerEnv).age_path()
}

/// `secrets/<control-plane>/nats-router-password.age`.
pub fn router_password_file(control_plane: &NodeName) -> String {
    service_password_file(control_plane, Service::Router)
}

/// `secrets/<control-plane>/nats-<service>-password.age`.
pub fn service_password_file(control_plane: &NodeName, service: Service) -> String {
    SecretId::new(control_plane.clone(), service.secret_kind()).age_path()
}

/// A fresh random password from the OS's generator.
pub fn generate_password() -> Secret {
    const LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rngs::OsRng;
    let mut s = String::with_capacity(PASSWORD_LEN);
    s.push(LETTERS[rng.gen_range(0..LETTERS.len())] as char);
    for _ in 1..PASSWORD_LEN {
        s.push(ALNUM[rng.gen_range(0..ALNUM.len())] as char);
    }
    Secret::new(s)
}

/// Is `s` a password as [`generate_password`] makes them (safe in the env file and for nats-server)?
pub fn is_valid_password(s: &str) -> bool {
    s.len() >= 16
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// A plaintext file to encrypt: where it goes, what it holds and who must be able to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFile {
    /// Path of the `.age` file relative to the repository root.
    pub file: String,
    /// agenix name.
    pub secret: &'static str,
    /// The plaintext.
    pub plaintext: Secret,
    /// The node whose host key it is encrypted to (besides the operators).
    pub reader: NodeName,
}

/// The passwords of every node, and the control plane's services'.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BusCredentials {
    passwords: BTreeMap<NodeName, Secret>,
    services: BTreeMap<Service, Secret>,
}

impl BusCredentials {
    /// Fresh passwords for every user of the plan, the services' included.
    pub fn generate(plan: &ServerPlan) -> Self {
        let mut c = Self::default();
        c.fill(plan);
        c.fill_services();
        c
    }

    /// Generates a password for each service that has none; returns those services (a fleet
    /// from before `_supervisor` and `_registry` gets theirs and keeps the router's).
    pub fn fill_services(&mut self) -> Vec<Service> {
        let mut added = Vec::new();
        for s in Service::ALL {
            if let std::collections::btree_map::Entry::Vacant(e) = self.services.entry(s) {
                e.insert(generate_password());
                added.push(s);
            }
        }
        added
    }

    /// The password of `service`.
    pub fn service_password(&self, service: Service) -> Option<&Secret> {
        self.services.get(&service)
    }

    /// The router's password.
    pub fn router_password(&self) -> Option<&Secret> {
        self.service_password(Service::Router)
    }

    /// Adds passwords for users that have none; drops nodes no longer in the plan. Returns the
    /// nodes that got a new password, so re-running after adding a node keeps the others.
    pub fn fill(&mut self, plan: &ServerPlan) -> Vec<NodeName> {
        self.passwords
            .retain(|n, _| plan.users.iter().any(|u| &u.user == n));
        let mut added = Vec::new();
        for u in &plan.users {
            if !self.passwords.contains_key(&u.user) {
                self.passwords.insert(u.user.clone(), generate_password());
                added.push(u.user.clone());
            }
        }
        added
    }

    /// Reads the decrypted server environment file back (to keep existing passwords).
    pub fn parse_server_env(
        plan: &ServerPlan,
        text: &str,
    ) -> Result<Self, crate::model::InvalidValue> {
        let mut passwords = BTreeMap::new();
        let mut services = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (var, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {}: expected NAME=VALUE", i + 1))?;
            let user = plan.users.iter().find(|u| u.password_var == var);
            let service = Service::from_password_var(var);
            if user.is_none() && service.is_none() {
                continue; // a node that left the fleet
            }
            if !is_valid_password(value) {
                // Never echo the value: it is a secret.
                return Err(format!(
                    "line {}: the value of {var} is not a fleetnix password (16+ letters and digits, starting with a letter)",
                    i + 1
                ).into());
            }
            if let Some(u) = user {
                passwords.insert(u.user.clone(), Secret::new(value));
            } else if let Some(s) = service {
                services.insert(s, Secret::new(value));
            }
        }
        Ok(BusCredentials {
            passwords,
            services,
        })
    }

    /// The password of `node`.
    pub fn password(&self, node: &str) -> Option<&Secret> {
        self.passwords
            .iter()
            .find(|(n, _)| n.as_str() == node)
            .map(|(_, s)| s)
    }

    /// `(variable, password)` pairs for the server's environment (the services' included),
    /// sorted by variable.
    pub fn env_pairs(&self) -> Vec<(String, &Secret)> {
        let mut v: Vec<(String, &Secret)> = self
            .passwords
            .iter()
            .map(|(n, s)| (password_var(n), s))
            .collect();
        v.extend(
            self.services
                .iter()
                .map(|(s, pw)| (s.password_var().to_string(), pw)),
        );
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The server's systemd environment file: `NATS_PASSWORD_<NODE>=<password>` lines.
    pub fn server_env(&self) -> Secret {
        let mut s = String::new();
        for (var, pw) in self.env_pairs() {
            s.push_str(&var);
            s.push('=');
            s.push_str(pw.expose());
            s.push('\n');
        }
        Secret::new(s)
    }

    /// Every file to encrypt, sorted by path: one password per node, the server's environment
    /// file and each service's password (all on the control plane).
    pub fn files(&self, plan: &ServerPlan) -> Result<Vec<CredentialFile>, BusError> {
        let mut out = Vec::new();
        for u in &plan.users {
            let pw = self
                .passwords
                .get(&u.user)
                .ok_or_else(|| BusError::UnknownNode(u.user.to_string()))?;
            out.push(CredentialFile {
                file: password_file(&u.user),
                secret: PASSWORD_SECRET,
                plaintext: pw.clone(),
                reader: u.user.clone(),
            });
        }
        for s in Service::ALL {
            let pw = self
                .services
                .get(&s)
                .ok_or_else(|| BusError::UnknownNode(s.user().to_string()))?;
            out.push(CredentialFile {
                file: service_password_file(&plan.server_name, s),
                secret: s.secret_kind().name(),
                plaintext: pw.clone(),
                reader: plan.server_name.clone(),
            });
        }
        out.push(CredentialFile {
            file: server_env_file(&plan.server_name),
            secret: SERVER_ENV_SECRET,
            plaintext: self.server_env(),
            reader: plan.server_name.clone(),
        });
        out.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_random_and_safe() {
        let a = generate_password();
        let b = generate_password();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), PASSWORD_LEN);
        assert!(is_valid_password(a.expose()));
        assert!(!format!("{a:?} {a}").contains(a.expose()));
    }

    #[test]
    fn layout() {
        let n = NodeName::parse("worker-01").unwrap();
        assert_eq!(password_file(&n), "secrets/worker-01/nats-password.age");
        assert_eq!(server_env_file(&n), "secrets/worker-01/nats-server-env.age");
        assert_eq!(password_var(&n), "NATS_PASSWORD_WORKER_01");
        assert!(super::super::conf::is_var_name(&password_var(&n)));
    }
}
