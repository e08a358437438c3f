//! TLS on the listeners, with etcd's flags: rustls on ring (the stack's
//! choice), tokio-rustls for the handshake, rcgen for `--auto-tls`.
//!
//! What is ours: the table of Go cipher-suite names (etcd's `--cipher-suites`
//! spells them as Go does), the reload rule (the files are looked at on every
//! new connection and the server configuration is rebuilt when one changed, so
//! renewed certificates are served without a restart; a rebuild that fails
//! keeps the last good configuration and says why), and the accept loop that
//! runs handshakes side by side with a bound on how many, so one slow or
//! hostile client cannot hold up the others.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use futures::StreamExt;
use rustls::crypto::ring::cipher_suite as suites;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite};
use tokio::sync::{Semaphore, mpsc};

use crate::io::{Conn, Incoming};

/// Whether a handshake failed on the other end's `bad_certificate` alert.
pub(crate) fn alert_bad_certificate(error: &io::Error) -> bool {
    matches!(
        error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate
        ))
    )
}

/// How long a refused connection is kept open, reading, after the alert.
const LINGER: Duration = Duration::from_secs(1);

/// The subject common name of a DER certificate, if it has one.
fn common_name(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    let name = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(name)
}
use crate::peer_names::{AllowedPeer, NamedPeers};

/// A TLS protocol version etcd's `--tls-min-version`/`--tls-max-version` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

impl TlsVersion {
    /// Parses etcd's spelling (`TLS1.2`, `TLS1.3`); older versions are refused
    /// with the reason.
    pub fn parse(text: &str, setting: &str) -> anyhow::Result<TlsVersion> {
        match text.trim() {
            "TLS1.2" => Ok(TlsVersion::Tls12),
            "TLS1.3" => Ok(TlsVersion::Tls13),
            "TLS1.0" | "TLS1.1" => {
                bail!("--{setting}: {text} is not supported: Mainstay speaks TLS 1.2 and 1.3 only")
            }
            other => bail!("--{setting}: unknown TLS version {other:?} (TLS1.2 or TLS1.3)"),
        }
    }
}

/// Settings every TLS listener shares (etcd's `--cipher-suites`,
/// `--tls-min-version`, `--tls-max-version`).
#[derive(Clone, Debug, PartialEq)]
pub struct TlsOptions {
    /// TLS 1.2 suites to offer, in order; empty: rustls' defaults. TLS 1.3
    /// suites are not configurable (as in Go).
    pub cipher_suites: Vec<SupportedCipherSuite>,
    /// Oldest version accepted.
    pub min_version: TlsVersion,
    /// Newest version accepted.
    pub max_version: TlsVersion,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            cipher_suites: Vec::new(),
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
        }
    }
}

impl TlsOptions {
    /// Checks the combination (etcd 3.5's rules) and builds the options.
    pub fn new(
        cipher_suites: &[String],
        min_version: TlsVersion,
        max_version: TlsVersion,
    ) -> anyhow::Result<TlsOptions> {
        if min_version > max_version {
            bail!("--tls-min-version is newer than --tls-max-version");
        }
        let cipher_suites = cipher_suites
            .iter()
            .map(|name| cipher_suite(name).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if !cipher_suites.is_empty() && min_version == TlsVersion::Tls13 {
            bail!(
                "--cipher-suites cannot be used with --tls-min-version=TLS1.3: TLS 1.3 suites are not configurable"
            );
        }
        Ok(TlsOptions {
            cipher_suites,
            min_version,
            max_version,
        })
    }
}

/// TLS 1.2 suites by their Go names (what etcd's `--cipher-suites` takes).
const SUITES: &[(&str, &SupportedCipherSuite)] = &[
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        &suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        &suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        &suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        &suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        &suites::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        &suites::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        &suites::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        &suites::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// Go's other TLS 1.2 suite names: known, but rustls has none of them (CBC,
/// RC4, 3DES, plain RSA key exchange).
const UNSUPPORTED_SUITES: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// The rustls suite for one Go cipher-suite name.
pub fn cipher_suite(name: &str) -> Result<SupportedCipherSuite, String> {
    let name = name.trim();
    if let Some((_, suite)) = SUITES.iter().find(|(go, _)| *go == name) {
        return Ok(**suite);
    }
    if UNSUPPORTED_SUITES.contains(&name) {
        return Err(format!(
            "--cipher-suites: {name} is not supported: Mainstay offers ECDHE key exchange with AES-GCM or ChaCha20-Poly1305 only"
        ));
    }
    Err(format!("--cipher-suites: unknown cipher suite {name:?}"))
}

/// One listener kind's certificate settings: etcd's `--cert-file`,
/// `--key-file`, `--trusted-ca-file`, `--client-cert-auth`,
/// `--client-crl-file`, `--auto-tls` (or their `--peer-` twins).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// CAs that sign client certificates (PEM).
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by `trusted_ca_file`.
    pub client_cert_auth: bool,
    /// Revoked client certificates (PEM CRLs).
    pub crl_file: Option<PathBuf>,
    /// Without a certificate, make a self-signed one.
    pub auto_tls: bool,
}

impl TlsFiles {
    /// Whether any setting asks for TLS.
    pub fn any(&self) -> bool {
        self.cert_file.is_some()
            || self.key_file.is_some()
            || self.trusted_ca_file.is_some()
            || self.client_cert_auth
            || self.crl_file.is_some()
            || self.auto_tls
    }

    /// Checks the combination; `prefix` is `""` or `"peer-"` for messages.
    pub fn check(&self, prefix: &str) -> anyhow::Result<()> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) | (None, Some(_)) => {
                bail!("--{prefix}cert-file and --{prefix}key-file must be given together")
            }
            _ => {}
        }
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            bail!(
                "--{prefix}client-cert-auth needs --{prefix}trusted-ca-file (the CA that signs client certificates)"
            );
        }
        if self.crl_file.is_some() && !self.client_cert_auth {
            let crl = if prefix.is_empty() { "client-" } else { prefix };
            bail!(
                "--{crl}crl-file needs --{prefix}client-cert-auth (only client certificates are checked against it)"
            );
        }
        Ok(())
    }

    /// Whether a listener can serve TLS with these settings.
    pub fn has_certificate(&self) -> bool {
        self.cert_file.is_some() || self.auto_tls
    }
}

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress per listener; further connections wait to start.
const HANDSHAKES_MAX: usize = 256;
/// Finished handshakes waiting for the server to take them.
const READY_MAX: usize = 64;
/// How long a self-signed certificate (`--auto-tls`) is valid (etcd's default).
const SELF_SIGNED_DAYS: i64 = 365;

/// The files a configuration was built from, as last seen.
type Stamp = Vec<Option<(SystemTime, u64)>>;

/// A TLS configuration built from files, rebuilt when one of them changed
/// (looked at on every call); when the rebuild fails, the last good one is
/// kept, with a warning, and not retried until the files change again.
pub(crate) struct Reloading<T> {
    files: TlsFiles,
    /// Whose files, for log lines ("client", "peer", "peer dialing").
    label: &'static str,
    current: Mutex<(Stamp, Arc<T>)>,
}

impl<T> Reloading<T> {
    /// Builds the first configuration (an error here is the caller's to report).
    pub(crate) fn new(
        files: &TlsFiles,
        label: &'static str,
        build: impl FnOnce(&TlsFiles) -> anyhow::Result<T>,
    ) -> anyhow::Result<Reloading<T>> {
        let seen = stamp(files);
        let first = build(files).with_context(|| format!("{label} TLS"))?;
        Ok(Reloading {
            files: files.clone(),
            label,
            current: Mutex::new((seen, Arc::new(first))),
        })
    }

    /// The current configuration, rebuilt with `build` first if a file changed.
    pub(crate) fn get(&self, build: impl FnOnce(&TlsFiles) -> anyhow::Result<T>) -> Arc<T> {
        let now = stamp(&self.files);
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.0 != now {
            match build(&self.files) {
                Ok(config) => {
                    tracing::info!(files = self.label, "TLS files changed; using the new ones");
                    *current = (now, Arc::new(config));
                }
                Err(error) => {
                    tracing::warn!(
                        files = self.label,
                        error = format!("{error:#}"),
                        "TLS files changed but cannot be used; keeping the previous ones"
                    );
                    current.0 = now;
                }
            }
        }
        current.1.clone()
    }
}

/// A listener's TLS server configuration, rebuilt when its files change.
pub struct ServerTls {
    options: TlsOptions,
    /// What the listener is, for log lines ("client", "peer").
    label: &'static str,
    /// Names a connecting peer's certificate must carry (peer listeners).
    allowed: AllowedPeer,
    config: Reloading<ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("label", &self.label)
            .field("files", &self.config.files)
            .finish()
    }
}

impl ServerTls {
    /// Builds the configuration once (a bad file stops the member here, with
    /// the reason); `files` has its certificate resolved (`resolve_auto`).
    pub fn new(
        files: &TlsFiles,
        options: &TlsOptions,
        label: &'static str,
        allowed: AllowedPeer,
    ) -> anyhow::Result<Arc<ServerTls>> {
        let config = Reloading::new(files, label, |files| build(files, options, &allowed))?;
        Ok(Arc::new(ServerTls {
            options: options.clone(),
            label,
            allowed,
            config,
        }))
    }

    /// The configuration for a new connection: rebuilt first if a file
    /// changed since the last build; the last good one if the rebuild fails.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config
            .get(|files| build(files, &self.options, &self.allowed))
    }
}

/// `files` with a certificate: with `--auto-tls` and none given, a
/// self-signed one for `hosts` is made (or reused) under `auto_dir`, as etcd
/// does under `<data-dir>/fixtures/`.
pub fn resolve_auto(
    files: &TlsFiles,
    label: &str,
    auto_dir: &Path,
    hosts: &[String],
) -> anyhow::Result<TlsFiles> {
    let mut files = files.clone();
    if files.cert_file.is_none() {
        if !files.auto_tls {
            bail!("{label} TLS needs a certificate and key (or automatic TLS)");
        }
        let (cert, key) = self_signed(auto_dir, hosts)
            .with_context(|| format!("make a self-signed {label} certificate"))?;
        files.cert_file = Some(cert);
        files.key_file = Some(key);
    }
    Ok(files)
}

fn stamp(files: &TlsFiles) -> Stamp {
    [
        &files.cert_file,
        &files.key_file,
        &files.trusted_ca_file,
        &files.crl_file,
    ]
    .into_iter()
    .map(|path| {
        let meta = std::fs::metadata(path.as_ref()?).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    })
    .collect()
}

pub(crate) fn read_certs(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))
        .with_context(|| format!("read {what}"))?;
    if certs.is_empty() {
        bail!("read {what}: {} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// ring with the chosen TLS 1.2 suites (TLS 1.3's always).
pub(crate) fn provider(options: &TlsOptions) -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    if !options.cipher_suites.is_empty() {
        let tls13 = provider
            .cipher_suites
            .iter()
            .copied()
            .filter(|suite| suite.tls13().is_some());
        provider.cipher_suites = tls13.chain(options.cipher_suites.iter().copied()).collect();
    }
    provider
}

/// The protocol versions between the options' bounds.
pub(crate) fn versions(options: &TlsOptions) -> Vec<&'static rustls::SupportedProtocolVersion> {
    [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(version, _)| (options.min_version..=options.max_version).contains(version))
    .map(|(_, version)| version)
    .collect()
}

/// The revocation lists in `path`: PEM (any number) or one DER list, as Go
/// reads them (etcd's own test fixtures are DER). A file with none is refused:
/// an empty list would revoke nothing without a word.
pub(crate) fn read_crls(path: &Path) -> anyhow::Result<Vec<CertificateRevocationListDer<'static>>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("read the revocation list {}", path.display()))?;
    let crls = if bytes.windows(11).any(|window| window == b"-----BEGIN ") {
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))
            .context("read the revocation list")?
    } else {
        vec![CertificateRevocationListDer::from(bytes)]
    };
    if crls.is_empty() {
        bail!("{} holds no revocation list", path.display());
    }
    Ok(crls)
}

/// A rustls server configuration from the files and options.
fn build(
    files: &TlsFiles,
    options: &TlsOptions,
    allowed: &AllowedPeer,
) -> anyhow::Result<ServerConfig> {
    let (Some(cert_file), Some(key_file)) = (&files.cert_file, &files.key_file) else {
        bail!("no certificate and key");
    };
    let chain = read_certs(cert_file, "the certificate (--cert-file)")?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|error| anyhow::anyhow!("{}: {error}", key_file.display()))
        .context("read the private key (--key-file)")?;
    let provider = Arc::new(provider(options));
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions(options))
        .context("TLS versions")?;
    let builder = if files.client_cert_auth {
        let Some(ca_file) = &files.trusted_ca_file else {
            bail!("client certificate checks need a trusted CA file");
        };
        let mut roots = RootCertStore::empty();
        let mut anchors = Vec::new();
        for cert in read_certs(ca_file, "the trusted CA (--trusted-ca-file)")? {
            anchors.push(cert.as_ref().to_vec());
            roots
                .add(cert)
                .with_context(|| format!("{}: not a usable CA certificate", ca_file.display()))?;
        }
        let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        if let Some(crl_file) = &files.crl_file {
            verifier = verifier.with_crls(read_crls(crl_file)?);
        }
        builder.with_client_cert_verifier(Arc::new(NamedPeers {
            inner: verifier.build().context("client certificate checks")?,
            allowed: allowed.clone(),
            anchors,
        }))
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("the certificate and key do not make a usable pair")?;
    // gRPC and HTTP/2 clients get h2; HTTP/1.1-only clients (curl --http1.1,
    // Prometheus) the gateway and metrics over HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A self-signed certificate for `hosts` in `dir` (`cert.pem`, `key.pem`),
/// reused if both files are there (etcd's `--auto-tls`).
fn self_signed(dir: &Path, hosts: &[String]) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut names: Vec<String> = hosts.to_vec();
    if !names.iter().any(|host| host == "localhost") {
        names.push("localhost".to_string());
    }
    let mut params = rcgen::CertificateParams::new(names).context("certificate names")?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(SELF_SIGNED_DAYS);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "mainstay");
    let key = rcgen::KeyPair::generate().context("generate a key")?;
    let cert = params.self_signed(&key).context("sign")?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, cert.pem())
        .with_context(|| format!("write {}", cert_path.display()))?;
    tracing::info!(cert = %cert_path.display(), "made a self-signed certificate (--auto-tls)");
    Ok((cert_path, key_path))
}

/// Writes a file only its owner can read.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("write {}", path.display()))
}

/// Connections from `incoming` after a TLS handshake each. Handshakes run side
/// by side (at most `HANDSHAKES_MAX`), each within `HANDSHAKE_TIMEOUT`; a
/// refused one is logged with the client's address and the reason, and the
/// server never sees it.
pub fn tls_incoming(mut incoming: Incoming, tls: Arc<ServerTls>) -> Incoming {
    let (ready, taken) = mpsc::channel::<io::Result<Conn>>(READY_MAX);
    tokio::spawn(async move {
        let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
        loop {
            let accepted = tokio::select! {
                // The server is gone: stop accepting (and free the listener).
                () = ready.closed() => break,
                accepted = incoming.next() => accepted,
            };
            let conn = match accepted {
                None => break,
                Some(Err(error)) => {
                    if ready.send(Err(error)).await.is_err() {
                        break;
                    }
                    continue;
                }
                Some(Ok(conn)) => conn,
            };
            let permit = tokio::select! {
                () = ready.closed() => break,
                permit = handshakes.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let config = tls.config();
            let label = tls.label;
            let ready = ready.clone();
            tokio::spawn(async move {
                let remote = conn.remote.clone();
                let handshake = tokio_rustls::TlsAcceptor::from(config)
                    .accept(conn)
                    .into_fallible();
                let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await;
                drop(permit);
                match outcome {
                    Ok(Ok(stream)) => {
                        // Only a certificate the handshake verified is offered
                        // (without client-cert-auth none is asked for).
                        let common_name = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(|leaf| common_name(leaf));
                        let conn = Conn::new(stream, remote).with_common_name(common_name);
                        // The server may be gone meanwhile: nothing to hand over.
                        let _ = ready.send(Ok(conn)).await;
                    }
                    Ok(Err((error, mut io))) => {
                        if alert_bad_certificate(&error) {
                            // The other end refused this member's certificate;
                            // said in etcd's (Go's) words too.
                            tracing::warn!(listener = label, %remote, "TLS handshake failed: remote error: tls: bad certificate");
                        } else {
                            tracing::warn!(listener = label, %remote, %error, "refused a connection: TLS handshake failed");
                        }
                        // Close gently after the alert: a close with the
                        // client's data unread would reset the connection
                        // and the client would never read why.
                        let _ = tokio::time::timeout(LINGER, async {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let _ = io.shutdown().await;
                            let mut sink = [0u8; 1024];
                            while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
                        })
                        .await;
                    }
                    Err(_) => {
                        tracing::warn!(listener = label, %remote, "refused a connection: TLS handshake took longer than {HANDSHAKE_TIMEOUT:?}");
                    }
                }
            });
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(taken))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_suites_by_go_name() {
        let table: &[(&str, Result<SupportedCipherSuite, &str>)] = &[
            (
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                Ok(suites::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
            ),
            (
                " TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                Ok(suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
            ),
            (
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
                Ok(suites::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
            ),
            (
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                Ok(suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
            ),
            ("TLS_RSA_WITH_AES_128_CBC_SHA", Err("is not supported")),
            (
                "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
                Err("is not supported"),
            ),
            ("TLS_AES_128_GCM_SHA256", Err("unknown cipher suite")),
            ("nonsense", Err("unknown cipher suite")),
        ];
        for (name, expected) in table {
            match (cipher_suite(name), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got.suite(), want.suite(), "{name}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{name}: {got}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn version_and_suite_combinations() {
        let table: &[(&[&str], TlsVersion, TlsVersion, Option<&str>)] = &[
            (&[], TlsVersion::Tls12, TlsVersion::Tls13, None),
            (&[], TlsVersion::Tls13, TlsVersion::Tls13, None),
            (&[], TlsVersion::Tls12, TlsVersion::Tls12, None),
            (
                &[],
                TlsVersion::Tls13,
                TlsVersion::Tls12,
                Some("newer than"),
            ),
            (
                &["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"],
                TlsVersion::Tls12,
                TlsVersion::Tls13,
                None,
            ),
            (
                &["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"],
                TlsVersion::Tls13,
                TlsVersion::Tls13,
                Some("cannot be used with --tls-min-version=TLS1.3"),
            ),
            (
                &["TLS_RSA_WITH_AES_128_CBC_SHA"],
                TlsVersion::Tls12,
                TlsVersion::Tls13,
                Some("not supported"),
            ),
        ];
        for (names, min, max, error) in table {
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            match (TlsOptions::new(&names, *min, *max), error) {
                (Ok(_), None) => {}
                (Err(got), Some(want)) => assert!(got.to_string().contains(want), "{got}"),
                (got, want) => panic!("{names:?} {min:?}-{max:?}: got {got:?}, want {want:?}"),
            }
        }
        for (text, ok) in [
            ("TLS1.2", true),
            ("TLS1.3", true),
            ("TLS1.1", false),
            ("TLS1.0", false),
            ("SSL3", false),
        ] {
            assert_eq!(
                TlsVersion::parse(text, "tls-min-version").is_ok(),
                ok,
                "{text}"
            );
        }
    }

    #[test]
    fn revocation_lists_in_pem_or_der() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().expect("key");
        let issuer = rcgen::Issuer::new(params, key);
        let now = time::OffsetDateTime::now_utc();
        let crl = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .expect("crl");
        let dir = tempfile::tempdir().expect("tempdir");
        let pem = crl.pem().expect("pem");
        let der = crl.der().to_vec();
        let cases: [(&str, Vec<u8>, Result<usize, &str>); 4] = [
            ("two.pem", format!("{pem}{pem}").into_bytes(), Ok(2)),
            ("one.der", der.clone(), Ok(1)),
            (
                "bad.pem",
                b"-----BEGIN X509 CRL-----\nnot base64!\n-----END X509 CRL-----\n".to_vec(),
                Err("read the revocation list"),
            ),
            (
                "cert.pem",
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
                Err("holds no revocation list"),
            ),
        ];
        for (name, bytes, expected) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).expect("write");
            match (read_crls(&path), expected) {
                (Ok(crls), Ok(count)) => {
                    assert_eq!(crls.len(), count, "{name}");
                    assert_eq!(crls[0].as_ref(), der.as_slice(), "{name}");
                }
                (Err(got), Err(want)) => {
                    assert!(format!("{got:#}").contains(want), "{name}: {got:#}")
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn file_combinations() {
        let cert = Some(PathBuf::from("c.pem"));
        let key = Some(PathBuf::from("k.pem"));
        let ca = Some(PathBuf::from("ca.pem"));
        let table = [
            (TlsFiles::default(), None),
            (
                TlsFiles {
                    cert_file: cert.clone(),
                    key_file: key.clone(),
                    ..TlsFiles::default()
                },
                None,
            ),
            (
                TlsFiles {
                    cert_file: cert.clone(),
                    ..TlsFiles::default()
                },
                Some("must be given together"),
            ),
            (
                TlsFiles {
                    cert_file: cert.clone(),
                    key_file: key.clone(),
                    client_cert_auth: true,
                    ..TlsFiles::default()
                },
                Some("needs --trusted-ca-file"),
            ),
            (
                TlsFiles {
                    cert_file: cert.clone(),
                    key_file: key.clone(),
                    trusted_ca_file: ca.clone(),
                    crl_file: Some(PathBuf::from("crl.pem")),
                    ..TlsFiles::default()
                },
                Some("--client-crl-file needs --client-cert-auth"),
            ),
            (
                TlsFiles {
                    auto_tls: true,
                    client_cert_auth: true,
                    trusted_ca_file: ca,
                    ..TlsFiles::default()
                },
                None,
            ),
        ];
        for (files, error) in table {
            match (files.check(""), error) {
                (Ok(()), None) => {}
                (Err(got), Some(want)) => assert!(got.to_string().contains(want), "{got}"),
                (got, want) => panic!("{files:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
