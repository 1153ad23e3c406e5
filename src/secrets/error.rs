//! The errors of the secrets commands ([`SecretsError`]).

use std::path::PathBuf;

/// Errors of the secrets commands. None of them ever contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// A node name that is not in the manifest.
    #[error("unknown node `{name}`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    UnknownNode {
        /// The name given.
        name: String,
        /// The closest node name, if any is close.
        suggestion: Option<String>,
    },
    /// A node argument that looks like an auth key.
    #[error("node argument {position} looks like a Tailscale auth key (not shown): keys are never arguments; pass it on standard input, in $TAILSCALE_AUTHKEY or with --from-file")]
    KeyAsArgument {
        /// 1-based position among the node arguments.
        position: usize,
    },
    /// A node argument that is not a hostname label (not echoed: it could be a pasted secret).
    #[error("node argument {position} is not a node name (lowercase letters, digits and '-')")]
    NotANodeName {
        /// 1-based position among the node arguments.
        position: usize,
    },
    /// A public key that cannot be used as an age recipient.
    #[error("{owner}: {reason}; expected an ssh-ed25519 or ssh-rsa (2048–4096 bits) public key or an age1… X25519 recipient")]
    BadRecipient {
        /// Whose key and where it is written.
        owner: String,
        /// What is wrong.
        reason: String,
    },
    /// The auth key is empty.
    #[error(
        "the Tailscale auth key from {origin} is not usable: it is empty; nothing was written"
    )]
    EmptyKey {
        /// Where it was read from.
        origin: String,
    },
    /// The auth key is not a plausible key.
    #[error("the Tailscale auth key from {origin} {reason}; nothing was written")]
    MalformedKey {
        /// Where it was read from.
        origin: String,
        /// What is wrong (never the key).
        reason: &'static str,
    },
    /// The credential is of the wrong kind (an API token, a client secret in a `preauth`
    /// fleet, …): the message says what to use instead.
    #[error("the Tailscale credential from {origin} {reason}; nothing was written")]
    WrongCredential {
        /// Where it was read from.
        origin: String,
        /// What is wrong and what to use (never the credential).
        reason: crate::model::CredentialError,
    },
    /// The auth key could not be read.
    #[error("cannot read the Tailscale auth key from {origin}: {error}")]
    ReadKey {
        /// Where it was read from.
        origin: String,
        /// Why.
        #[source]
        error: std::io::Error,
    },
    /// The identity file cannot be read.
    #[error("cannot read identity {}: {error}; nothing was written", path.display())]
    IdentityRead {
        /// The identity file.
        path: PathBuf,
        /// Why.
        #[source]
        error: std::io::Error,
    },
    /// The identity file holds no usable identity.
    #[error("identity {} is not usable: {reason}; nothing was written", path.display())]
    IdentityInvalid {
        /// The identity file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The identity does not decrypt a secret.
    #[error("identity {} cannot decrypt {file} ({reason}); use the private key of one of its recipients (an operator key from fleet.yml); nothing was written", identity.display())]
    Decrypt {
        /// The `.age` file, relative to the root.
        file: String,
        /// The identity file.
        identity: PathBuf,
        /// age's reason.
        reason: String,
    },
    /// A secret that should exist does not.
    #[error("{file} does not exist; write it with `{fix}`")]
    NoSecret {
        /// The node.
        node: String,
        /// The file, relative to the root.
        file: String,
        /// The command that writes it.
        fix: String,
    },
    /// A secret cannot be written because its node has no host key.
    #[error("{node} has no host_key in {}, so {file} cannot be encrypted to it{because}; nothing was written; fix: {fix}", nodes_file.display())]
    NoHostKey {
        /// The node.
        node: String,
        /// The secret's file, relative to the root.
        file: String,
        /// nodes.yml.
        nodes_file: PathBuf,
        /// Why this one matters, if it needs saying (starts with "; ").
        because: String,
        /// The command that fetches the key.
        fix: String,
    },
    /// The decrypted nats-server environment file is not what `set-nats` writes.
    #[error("{file}: {reason} (values are not shown); nothing was written. Fix the file with `agenix -e`, or delete it to generate new passwords for every node")]
    ServerEnv {
        /// The file, relative to the root.
        file: String,
        /// What is wrong (never a password).
        reason: String,
    },
    /// The bus cannot be planned (no `nats` service, …).
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    /// Encryption failed.
    #[error("encrypting {file} failed: {reason}; nothing was written")]
    Encrypt {
        /// The file, relative to the root.
        file: String,
        /// age's reason.
        reason: String,
    },
    /// `recipients.json` is damaged.
    #[error("cannot parse {}: {reason}; delete it and run `fleetnix secrets rekey` to rewrite every secret", path.display())]
    Records {
        /// The file.
        path: PathBuf,
        /// serde's message.
        reason: String,
    },
    /// Generated Nix failed the syntax check (a fleetnix bug).
    #[error("generated {} is not valid Nix (a fleetnix bug; nothing written): {errors}", path.display())]
    NixSyntax {
        /// The file.
        path: PathBuf,
        /// rnix's messages.
        errors: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}
