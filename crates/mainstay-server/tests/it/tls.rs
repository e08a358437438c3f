//! Client TLS, as a user meets it: etcd's flags on a real member, real
//! handshakes from tonic (what etcd clients do) and from rustls directly (for
//! what tonic cannot ask for, an old protocol version). The TLS matrix: the
//! right certificate is served; a wrong CA, an expired or revoked certificate,
//! a certificate for another host, no client certificate under
//! `--client-cert-auth`, plain text to a TLS port and TLS 1.2 under
//! `--tls-min-version=TLS1.3` are each refused and serve nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mainstay_proto::etcdserverpb::kv_client::KvClient;
use mainstay_proto::etcdserverpb::{PutRequest, RangeRequest};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use time::OffsetDateTime;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::harness::{Options, TestCluster};

/// A certificate authority for the test.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

pub fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("key");
    let pem = params.self_signed(&key).expect("self-signed").pem();
    Ca {
        issuer: Issuer::new(params, key),
        pem,
    }
}

/// A certificate and key (PEM) signed by `ca`.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

#[derive(Clone, Copy)]
pub enum Usage {
    Server,
    Client,
    /// Both: a member serves and dials its peers with one certificate.
    Peer,
}

pub fn leaf(ca: &Ca, cn: &str, serial: u64, usage: Usage, expired: bool) -> Leaf {
    let names = match usage {
        Usage::Server | Usage::Peer => vec!["localhost".to_string(), "127.0.0.1".to_string()],
        Usage::Client => Vec::new(),
    };
    let mut params = CertificateParams::new(names).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.serial_number = Some(SerialNumber::from(serial));
    params.extended_key_usages = match usage {
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::Peer => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    let now = OffsetDateTime::now_utc();
    if expired {
        params.not_before = now - time::Duration::days(30);
        params.not_after = now - time::Duration::days(1);
    } else {
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(30);
    }
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.issuer).expect("signed");
    Leaf {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn revocation_list(ca: &Ca, serials: &[u64]) -> String {
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::hours(1),
        next_update: now + time::Duration::days(30),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|serial| RevokedCertParams {
                serial_number: SerialNumber::from(*serial),
                revocation_time: now - time::Duration::hours(1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params
        .signed_by(&ca.issuer)
        .expect("crl")
        .pem()
        .expect("crl pem")
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// How a client connects.
struct Client<'a> {
    trust: &'a str,
    identity: Option<&'a Leaf>,
    domain: &'a str,
}

/// Connects over TLS and puts then reads a key; the error text if any step
/// fails (within a few seconds).
async fn round_trip(port: u16, client: &Client<'_>) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(client.trust))
        .domain_name(client.domain);
    if let Some(leaf) = client.identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert, &leaf.key));
    }
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    let mut kv = KvClient::new(channel);
    kv.put(PutRequest {
        key: b"tls".to_vec(),
        value: b"yes".to_vec().into(),
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    let got = kv
        .range(RangeRequest {
            key: b"tls".to_vec(),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    if got.kvs.first().map(|kv| &kv.value[..]) != Some(b"yes".as_slice()) {
        return Err(format!("read back {got:?}"));
    }
    Ok(())
}

/// Waits until the member serves `client` (it starts serving after electing
/// itself and publishing).
async fn wait_served(port: u16, client: &Client<'_>) {
    let mut last = String::new();
    for _ in 0..100 {
        match round_trip(port, client).await {
            Ok(()) => return,
            Err(error) => last = error,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the member never served the right client: {last}");
}

/// A raw TLS 1.2-only handshake with a valid client certificate: whether it
/// completes.
async fn tls12_handshake(port: u16, ca: &Ca, identity: &Leaf) -> Result<(), String> {
    raw_handshake(port, ca, Some(identity), &[&rustls::version::TLS12]).await
}

/// A raw TLS handshake to `port` (trusting `ca`, presenting `identity` if
/// any) followed by one read: `Ok` only if the server kept the connection
/// (a refused client certificate is answered with an alert after the
/// handshake in TLS 1.3).
pub async fn raw_handshake(
    port: u16,
    ca: &Ca,
    identity: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).expect("ca"))
        .expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("versions")
    .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => {
            let chain =
                vec![CertificateDer::from_pem_slice(identity.cert.as_bytes()).expect("cert")];
            let key = PrivateKeyDer::from_pem_slice(identity.key.as_bytes()).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").expect("name");
    let mut stream = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    // An HTTP/2 preface and empty SETTINGS: an accepted client gets the
    // server's SETTINGS back, a refused one an alert or a closed connection.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    stream.write_all(&hello).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err("closed".to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".to_string()),
    }
}

/// `--client-cert-allowed-hostname`: a certificate from the trusted CA that
/// does not name the host is refused in the handshake; one that does is
/// served.
#[tokio::test]
async fn client_certificates_must_name_the_allowed_host() {
    let ca1 = ca("test CA");
    let server = leaf(&ca1, "member", 1, Usage::Server, false);
    // Peer usage: names localhost and 127.0.0.1, and may act as a client.
    let named = leaf(&ca1, "named", 2, Usage::Peer, false);
    let unnamed = leaf(&ca1, "unnamed", 3, Usage::Client, false);
    let mut cluster = TestCluster::prepare(1, Options::default()).await;
    let files = cluster.root.join("pki");
    std::fs::create_dir_all(&files).expect("pki dir");
    let port = cluster.members[0].client_port;
    {
        let args = &mut cluster.members[0].args;
        args.listen_client_urls = Some(format!("https://127.0.0.1:{port}"));
        args.advertise_client_urls = Some(format!("https://127.0.0.1:{port}"));
        args.cert_file = Some(write(&files, "server.pem", &server.cert));
        args.key_file = Some(write(&files, "server-key.pem", &server.key));
        args.trusted_ca_file = Some(write(&files, "ca.pem", &ca1.pem));
        args.client_cert_auth = Some(true);
        args.client_cert_allowed_hostname = Some("localhost".to_string());
    }
    cluster.start_member(0).await;
    let right = Client {
        trust: &ca1.pem,
        identity: Some(&named),
        domain: "localhost",
    };
    wait_served(port, &right).await;
    let wrong = Client {
        identity: Some(&unnamed),
        ..right
    };
    let refused = round_trip(port, &wrong).await;
    assert!(
        refused.is_err(),
        "a certificate without the host name was served"
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn client_tls_matrix() {
    // Method: one member with a CA-signed certificate, --client-cert-auth, a
    // revocation list and --tls-min-version=TLS1.3; every client below tries
    // a put and a read. Then the certificate file is replaced (an expired one,
    // then the good one again) while the member runs.
    let ca1 = ca("test CA");
    let ca2 = ca("other CA");
    let server = leaf(&ca1, "member", 1, Usage::Server, false);
    let expired_server = leaf(&ca1, "member", 2, Usage::Server, true);
    let good = leaf(&ca1, "alice", 10, Usage::Client, false);
    let revoked = leaf(&ca1, "mallory", 66, Usage::Client, false);
    let expired = leaf(&ca1, "bob", 11, Usage::Client, true);
    let foreign = leaf(&ca2, "alice", 12, Usage::Client, false);

    let mut cluster = TestCluster::prepare(1, Options::default()).await;
    let files = cluster.root.join("pki");
    std::fs::create_dir_all(&files).expect("pki dir");
    let cert_file = write(&files, "server.pem", &server.cert);
    let key_file = write(&files, "server-key.pem", &server.key);
    let port = cluster.members[0].client_port;
    {
        let args = &mut cluster.members[0].args;
        args.listen_client_urls = Some(format!("https://127.0.0.1:{port}"));
        args.advertise_client_urls = Some(format!("https://127.0.0.1:{port}"));
        args.cert_file = Some(cert_file.clone());
        args.key_file = Some(key_file);
        args.trusted_ca_file = Some(write(&files, "ca.pem", &ca1.pem));
        args.client_cert_auth = Some(true);
        args.client_crl_file = Some(write(&files, "crl.pem", &revocation_list(&ca1, &[66])));
        args.tls_min_version = Some("TLS1.3".to_string());
    }
    cluster.start_member(0).await;

    let right = Client {
        trust: &ca1.pem,
        identity: Some(&good),
        domain: "localhost",
    };
    wait_served(port, &right).await;
    let by_ip = Client {
        domain: "127.0.0.1",
        ..right
    };
    assert_eq!(
        round_trip(port, &by_ip).await,
        Ok(()),
        "the right client by IP"
    );

    let refused = [
        (
            "no client certificate",
            Client {
                identity: None,
                ..right
            },
        ),
        (
            "a client certificate from another CA",
            Client {
                identity: Some(&foreign),
                ..right
            },
        ),
        (
            "a revoked client certificate",
            Client {
                identity: Some(&revoked),
                ..right
            },
        ),
        (
            "an expired client certificate",
            Client {
                identity: Some(&expired),
                ..right
            },
        ),
        (
            "a client that trusts another CA",
            Client {
                trust: &ca2.pem,
                ..right
            },
        ),
        (
            "a client that expects another host",
            Client {
                domain: "etcd.example.com",
                ..right
            },
        ),
    ];
    for (case, client) in &refused {
        assert!(
            round_trip(port, client).await.is_err(),
            "{case} must be refused"
        );
    }

    // Plain text to the TLS port: nothing is served.
    let plain = KvClient::connect(format!("http://127.0.0.1:{port}")).await;
    if let Ok(mut kv) = plain {
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            kv.range(RangeRequest {
                key: b"tls".to_vec(),
                ..Default::default()
            }),
        )
        .await;
        assert!(
            !matches!(got, Ok(Ok(_))),
            "plain text to a TLS port must not be served"
        );
    }

    // TLS 1.2 under --tls-min-version=TLS1.3.
    assert!(
        tls12_handshake(port, &ca1, &good).await.is_err(),
        "TLS 1.2 must be refused under --tls-min-version=TLS1.3"
    );

    // A renewed certificate file is served to new connections, no restart:
    // first an expired one (refused by clients), then a good one again.
    std::fs::write(&cert_file, &expired_server.cert).expect("swap cert");
    std::fs::write(files.join("server-key.pem"), &expired_server.key).expect("swap key");
    assert!(
        round_trip(port, &right).await.is_err(),
        "an expired server certificate must be refused by the client"
    );
    std::fs::write(&cert_file, &server.cert).expect("restore cert");
    std::fs::write(files.join("server-key.pem"), &server.key).expect("restore key");
    assert_eq!(round_trip(port, &right).await, Ok(()), "after renewal");
    cluster.stop_member(0).await.expect("stops cleanly");
}

#[tokio::test]
async fn auto_tls_serves_a_self_signed_certificate_kept_in_the_data_dir() {
    let mut cluster = TestCluster::prepare(1, Options::default()).await;
    let port = cluster.members[0].client_port;
    {
        let args = &mut cluster.members[0].args;
        args.listen_client_urls = Some(format!("https://127.0.0.1:{port}"));
        args.auto_tls = Some(true);
    }
    cluster.start_member(0).await;
    let cert_path = cluster.data_dir(0).join("fixtures/client/cert.pem");
    let cert = std::fs::read_to_string(&cert_path).expect("self-signed certificate written");
    let client = Client {
        trust: &cert,
        identity: None,
        domain: "127.0.0.1",
    };
    wait_served(port, &client).await;
    let key_mode = std::fs::metadata(cluster.data_dir(0).join("fixtures/client/key.pem"))
        .map(|meta| std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777)
        .expect("key written");
    assert_eq!(
        key_mode, 0o600,
        "the private key is readable by its owner only"
    );
    // A restart keeps the same certificate (clients that pinned it still work).
    cluster.stop_member(0).await.expect("stops cleanly");
    cluster.start_member(0).await;
    assert_eq!(
        std::fs::read_to_string(&cert_path).expect("still there"),
        cert
    );
    wait_served(port, &client).await;
    cluster.stop_member(0).await.expect("stops cleanly");
}

#[tokio::test]
async fn a_member_with_unusable_certificate_files_refuses_to_start() {
    // (what is wrong, the setting, what the error says)
    let mut cluster = TestCluster::prepare(1, Options::default()).await;
    let dir = cluster.root.join("bad");
    std::fs::create_dir_all(&dir).expect("dir");
    let garbage = write(&dir, "garbage.pem", "not a certificate\n");
    let ca1 = ca("test CA");
    let server = leaf(&ca1, "member", 1, Usage::Server, false);
    let other = leaf(&ca1, "member", 2, Usage::Server, false);
    let cert = write(&dir, "server.pem", &server.cert);
    let key = write(&dir, "key.pem", &server.key);
    let other_key = write(&dir, "other-key.pem", &other.key);
    let port = cluster.members[0].client_port;
    let cases = [
        (
            Some(garbage.clone()),
            Some(key.clone()),
            "read the certificate",
        ),
        (Some(cert.clone()), Some(garbage), "read the private key"),
        (
            Some(cert.clone()),
            Some(dir.join("missing.pem")),
            "missing.pem",
        ),
        (Some(cert), Some(other_key), "do not make a usable pair"),
    ];
    for (cert_file, key_file, expected) in cases {
        let args = &mut cluster.members[0].args;
        args.listen_client_urls = Some(format!("https://127.0.0.1:{port}"));
        args.cert_file = cert_file;
        args.key_file = key_file;
        let outcome = cluster
            .try_start_member(0, Duration::from_secs(10))
            .await
            .expect("refuses at once");
        let message = format!("{:#}", outcome.expect_err("must refuse"));
        assert!(message.contains(expected), "{expected}: {message}");
    }
}
