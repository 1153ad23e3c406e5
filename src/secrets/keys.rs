//! Keys: recipients (node host keys, operator keys), identities (to decrypt), and
//! reading the Tailscale auth key without copies left in memory where we can help it.

use super::error::SecretsError;
use crate::model::{Fleet, Node, NodeName};
use crate::secret::Secret;
use serde::Serialize;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;
use zeroize::{Zeroize, Zeroizing};

use crate::spec::secrets::MAX_AUTHKEY_BYTES;

/// Whose key a recipient is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Owner {
    /// A node's SSH host key.
    Node(NodeName),
    /// An operator's key from `fleet.yml`.
    Operator(String),
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Node(n) => write!(f, "{n}"),
            Owner::Operator(o) => write!(f, "operator {o}"),
        }
    }
}

/// One recipient of a secret: who, and the public key in canonical form
/// (`ssh-ed25519 AAAA…` / `ssh-rsa AAAA…` without comment, or `age1…`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recipient {
    /// Whose key it is.
    pub owner: Owner,
    /// Canonical public key.
    pub key: String,
}

impl Recipient {
    /// The age recipient for encryption. `key` was parsed by [`parse_recipient`], so this succeeds
    /// unless the value was built by hand.
    pub fn to_age(&self) -> Result<Box<dyn age::Recipient + Send>, SecretsError> {
        parse_age(&self.key)
            .map(|(_, r)| r)
            .map_err(|reason| SecretsError::BadRecipient {
                owner: self.owner.to_string(),
                reason,
            })
    }
}

type ParsedKey = (String, Box<dyn age::Recipient + Send>);

/// Parses a public key into its canonical text and an age recipient; `Err` explains why not.
fn parse_age(key: &str) -> Result<ParsedKey, String> {
    let key = key.trim();
    if key.starts_with("age1") {
        let hrp = key.rfind('1').map(|i| &key[..i]).unwrap_or("");
        if hrp != "age" {
            return Err(format!(
                "`{}…` is an age plugin recipient, which fleetnix does not support",
                hrp
            ));
        }
        return age::x25519::Recipient::from_str(key)
            .map(|r| (r.to_string(), Box::new(r) as Box<dyn age::Recipient + Send>))
            .map_err(|e| format!("not a valid age X25519 recipient ({e})"));
    }
    use age::ssh::ParseRecipientKeyError as E;
    match age::ssh::Recipient::from_str(key) {
        Ok(r) => Ok((r.to_string(), Box::new(r))),
        Err(E::Unsupported(kind)) => Err(format!("key type `{kind}` is not supported")),
        Err(E::RsaModulusTooSmall) => Err("the ssh-rsa key is shorter than 2048 bits".into()),
        Err(E::RsaModulusTooLarge) => Err("the ssh-rsa key is longer than 4096 bits".into()),
        Err(_) => {
            let kind = key.split_whitespace().next().unwrap_or("");
            if ["ssh-ed25519", "ssh-rsa"].contains(&kind) {
                Err(format!(
                    "not a valid {kind} public key (the key data does not decode)"
                ))
            } else {
                Err(format!("key type `{kind}` is not supported"))
            }
        }
    }
}

/// Parses `key` for `owner`; the error names the owner and where the key was written.
pub fn parse_recipient(fleet: &Fleet, owner: Owner, key: &str) -> Result<Recipient, SecretsError> {
    match parse_age(key) {
        Ok((canonical, _)) => Ok(Recipient {
            owner,
            key: canonical,
        }),
        Err(reason) => Err(SecretsError::BadRecipient {
            owner: match &owner {
                Owner::Node(n) => {
                    format!("node {n}: host_key in {}", fleet.sources.nodes.display())
                }
                Owner::Operator(o) => format!(
                    "operator {o}: operators.keys in {}",
                    fleet.sources.fleet.display()
                ),
            },
            reason,
        }),
    }
}

/// The operators' keys, in `fleet.yml` order.
pub fn operator_recipients(fleet: &Fleet) -> Result<Vec<Recipient>, SecretsError> {
    fleet
        .settings
        .operators
        .keys
        .iter()
        .map(|k| parse_recipient(fleet, Owner::Operator(k.name.clone()), &k.key))
        .collect()
}

/// Who a node's secrets are encrypted to: its host key, then the operators' keys (duplicates
/// dropped). `None` if the node has no `host_key`: its secrets cannot be written.
pub fn desired_recipients(
    fleet: &Fleet,
    node: &Node,
) -> Result<Option<Vec<Recipient>>, SecretsError> {
    let Some(host_key) = &node.host_key else {
        return Ok(None);
    };
    let mut out = vec![parse_recipient(
        fleet,
        Owner::Node(node.name.clone()),
        host_key,
    )?];
    for r in operator_recipients(fleet)? {
        if !out.iter().any(|o| o.key == r.key) {
            out.push(r);
        }
    }
    Ok(Some(out))
}

/// The command that fetches a node's host key over Tailscale.
pub fn keyscan_hint(node: &Node) -> String {
    format!(
        "ssh-keyscan -t ed25519 {} | cut -d' ' -f2-",
        node.tailscale_ip
    )
}

/// Identities read from one file (age `AGE-SECRET-KEY-1…` lines, an OpenSSH private key, or a
/// passphrase-encrypted age identity), as the `age` CLI reads `-i`.
pub struct Identities(Vec<Box<dyn age::Identity>>);

impl Identities {
    /// Reads `path`. Errors name the file; they never contain key material.
    pub fn read(path: &Path) -> Result<Self, SecretsError> {
        // A clear I/O error first (missing, unreadable, a directory).
        std::fs::File::open(path)
            .and_then(|f| {
                if f.metadata()?.is_dir() {
                    Err(std::io::Error::other("it is a directory"))
                } else {
                    Ok(())
                }
            })
            .map_err(|error| SecretsError::IdentityRead {
                path: path.to_path_buf(),
                error,
            })?;
        let name = path.to_str().ok_or_else(|| SecretsError::IdentityInvalid {
            path: path.to_path_buf(),
            reason: "the path is not UTF-8".into(),
        })?;
        let ids = age::cli_common::read_identities(
            vec![name.to_string()],
            None,
            &mut age::cli_common::StdinGuard::new(false),
        )
        .map_err(|e| SecretsError::IdentityInvalid {
            path: path.to_path_buf(),
            reason: e.to_string().trim().to_string(),
        })?;
        if ids.is_empty() {
            return Err(SecretsError::IdentityInvalid {
                path: path.to_path_buf(),
                reason: "it contains no identity".into(),
            });
        }
        Ok(Identities(ids))
    }

    /// Decrypts an age file (binary or armored) into zeroized memory; a plaintext longer than
    /// `max` bytes is refused (the buffer is allocated once, so no copy is left behind).
    pub(super) fn decrypt(
        &self,
        ciphertext: &[u8],
        max: usize,
    ) -> Result<Zeroizing<Vec<u8>>, String> {
        let reader = age::armor::ArmoredReader::new(ciphertext);
        let decryptor = age::Decryptor::new_buffered(reader).map_err(|e| e.to_string())?;
        let mut stream = decryptor
            .decrypt(self.0.iter().map(|i| i.as_ref()))
            .map_err(|e| e.to_string())?;
        let mut out = Zeroizing::new(Vec::with_capacity(max + 1));
        let mut chunk = Zeroizing::new([0u8; 1024]);
        loop {
            let n = stream.read(&mut chunk[..]).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            if out.len() + n > max {
                return Err(format!("the plaintext is longer than {max} bytes"));
            }
            out.extend_from_slice(&chunk[..n]);
        }
        Ok(out)
    }
}

/// Encrypts `plaintext` to `recipients` (binary age format, like agenix).
pub(super) fn encrypt(recipients: &[Recipient], plaintext: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let parsed = recipients
        .iter()
        .map(|r| r.to_age())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if parsed.is_empty() {
        return Err("no recipients".into());
    }
    let encryptor =
        age::Encryptor::with_recipients(parsed.iter().map(|r| r.as_ref() as &dyn age::Recipient))
            .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut w = encryptor.wrap_output(&mut out).map_err(|e| e.to_string())?;
    w.write_all(plaintext).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// Checks an auth key given as bytes and returns it as a secret: surrounding whitespace is
/// trimmed; it must be non-empty, UTF-8, and contain no whitespace or control characters, and be
/// a pre-auth key or an OAuth client secret ([`crate::model::enrolment_kind`]).
/// `origin` (e.g. "standard input") names where it came from in errors; the key never appears.
pub fn parse_authkey(bytes: &[u8], origin: &str) -> Result<Secret, SecretsError> {
    let trimmed = bytes.trim_ascii();
    if trimmed.is_empty() {
        return Err(SecretsError::EmptyKey {
            origin: origin.to_string(),
        });
    }
    let malformed = |reason: &'static str| SecretsError::MalformedKey {
        origin: origin.to_string(),
        reason,
    };
    let text = std::str::from_utf8(trimmed).map_err(|_| malformed("is not UTF-8 text"))?;
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(malformed(
            "contains whitespace or control characters (one key, on one line)",
        ));
    }
    if text.len() > MAX_AUTHKEY_BYTES {
        return Err(malformed("is too long"));
    }
    // Only enrolment credentials: an API token (or anything unknown) is refused with what to
    // use instead.
    crate::model::enrolment_kind(text).map_err(|reason| SecretsError::WrongCredential {
        origin: origin.to_string(),
        reason,
    })?;
    // Exact capacity, so turning it into a boxed str does not reallocate and leave a copy.
    let mut s = String::with_capacity(text.len());
    s.push_str(text);
    Ok(Secret::from(s))
}

/// Reads an auth key from `reader` until end of input (at most [`MAX_AUTHKEY_BYTES`] plus
/// surrounding whitespace) into a fixed zeroized buffer, then [`parse_authkey`].
pub fn read_authkey(mut reader: impl Read, origin: &str) -> Result<Secret, SecretsError> {
    let mut buf = Zeroizing::new(vec![0u8; 2 * MAX_AUTHKEY_BYTES]);
    let mut n = 0;
    loop {
        if n == buf.len() {
            return Err(SecretsError::MalformedKey {
                origin: origin.to_string(),
                reason: "is too long",
            });
        }
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                return Err(SecretsError::ReadKey {
                    origin: origin.to_string(),
                    error,
                })
            }
        }
    }
    parse_authkey(&buf[..n], origin)
}

/// Reads the auth key from the environment variable `var` (if set), zeroizing the copy read.
/// `Ok(None)` if the variable is not set.
pub fn authkey_from_env(var: &str) -> Result<Option<Secret>, SecretsError> {
    let Some(value) = std::env::var_os(var) else {
        return Ok(None);
    };
    let mut bytes = value.into_encoded_bytes();
    let result = parse_authkey(&bytes, &format!("${var}"));
    bytes.zeroize();
    result.map(Some)
}

/// Reads the auth key from a file.
pub fn authkey_from_file(path: &Path) -> Result<Secret, SecretsError> {
    let origin = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|error| SecretsError::ReadKey {
        origin: origin.clone(),
        error,
    })?;
    read_authkey(file, &origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authkey_is_trimmed_and_checked() {
        let k = format!("tskey-auth-{}", "FAKE0123");
        let s = parse_authkey(format!("  {k}\n").as_bytes(), "test").unwrap();
        assert_eq!(s.expose(), k);
        let empty = parse_authkey(b" \n\t", "stdin").unwrap_err().to_string();
        assert!(
            empty.contains("stdin") && empty.contains("empty"),
            "{empty}"
        );
        let two = format!("{k}\n{k}");
        let e = parse_authkey(two.as_bytes(), "f").unwrap_err().to_string();
        assert!(!e.contains(&k), "{e}");
        assert!(e.contains("whitespace"), "{e}");
        let token = format!("tskey-api-{}", "FAKE0123");
        let e = parse_authkey(token.as_bytes(), "$TAILSCALE_AUTHKEY")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("API access token") && e.contains("TS_API_KEY") && !e.contains("FAKE0123"),
            "{e}"
        );
        let e = parse_authkey(b"hunter2", "f").unwrap_err().to_string();
        assert!(e.contains("neither a pre-auth key"), "{e}");
    }

    #[test]
    fn read_authkey_limits_length() {
        let key = |len: usize| {
            let mut k = format!("tskey-auth-{}", "FAKE-").into_bytes();
            k.resize(len, b'a');
            k
        };
        assert!(read_authkey(&key(3 * MAX_AUTHKEY_BYTES)[..], "x").is_err());
        assert!(read_authkey(&key(MAX_AUTHKEY_BYTES)[..], "x").is_ok());
        assert!(read_authkey(&key(MAX_AUTHKEY_BYTES + 1)[..], "x").is_err());
    }

    #[test]
    fn plugin_and_unsupported_keys_are_explained() {
        let e = parse_age("age1yubikey1qqqqqqqqqqqqqqqqqqqqqqqqqq")
            .err()
            .unwrap();
        assert!(e.contains("plugin"), "{e}");
        let e = parse_age("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY=")
            .err()
            .unwrap();
        assert!(e.contains("ecdsa-sha2-nistp256"), "{e}");
        let e = parse_age("ssh-ed25519 AAAAAAAAAAAAAAAAAAAAAAAA")
            .err()
            .unwrap();
        assert!(e.contains("does not decode"), "{e}");
    }
}
