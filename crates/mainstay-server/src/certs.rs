//! `mainstay certs`: a certificate authority and the certificates a cluster
//! and its clients need, so that running with TLS is one command away (rcgen
//! makes and signs them; nothing else is needed on the machine).
//!
//! In the folder: `ca.pem` and `ca-key.pem` (made once, reused by later runs,
//! so members and clients can be added), `<member>.pem` and `<member>-key.pem`
//! for each member (server and client use: a member is a client of its
//! peers), `client-<name>.pem` and `client-<name>-key.pem` for each client
//! (its common name is the user name once auth is on, as in etcd). A file
//! that exists is kept, never overwritten; private keys are readable by their
//! owner only.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::tls::write_private;

/// One member: its name and the host names and addresses it is reached by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertMember {
    /// The member's name (`--name`).
    pub name: String,
    /// DNS names and IP addresses in its certificate.
    pub hosts: Vec<String>,
}

impl CertMember {
    /// Parses `name=host[,host...]`.
    pub fn parse(text: &str) -> Result<CertMember, String> {
        let (name, hosts) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not name=host[,host...]"))?;
        check_name(name)?;
        let hosts: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|host| !host.is_empty())
            .map(String::from)
            .collect();
        if hosts.is_empty() {
            return Err(format!("{text:?} names no host"));
        }
        Ok(CertMember {
            name: name.to_string(),
            hosts,
        })
    }
}

/// Names become file names: letters, digits, `-`, `_` and `.` only.
pub fn check_name(name: &str) -> Result<(), String> {
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.starts_with('.') || !name.chars().all(fine) {
        return Err(format!(
            "{name:?} is not a usable name (letters, digits, '-', '_' and '.'; not starting with '.')"
        ));
    }
    Ok(())
}

/// What `make` wrote or kept, by path.
#[derive(Debug, Default)]
pub struct Made {
    /// Files written now.
    pub written: Vec<PathBuf>,
    /// Files that were there already and are kept.
    pub kept: Vec<PathBuf>,
}

#[derive(Clone, Copy)]
enum Role {
    Member,
    Client,
}

/// Makes (or reuses) the CA in `dir`, then each member's and client's
/// certificate that is not there yet, valid for `days`.
pub fn make(
    dir: &Path,
    members: &[CertMember],
    clients: &[String],
    days: u32,
) -> anyhow::Result<Made> {
    if days == 0 {
        bail!("--days must be at least 1");
    }
    for client in clients {
        check_name(client).map_err(anyhow::Error::msg)?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut made = Made::default();
    let ca = ca(dir, days, &mut made)?;
    for member in members {
        leaf(
            dir,
            &member.name,
            &member.name,
            &member.hosts,
            Role::Member,
            &ca,
            days,
            &mut made,
        )?;
    }
    for client in clients {
        leaf(
            dir,
            &format!("client-{client}"),
            client,
            &[],
            Role::Client,
            &ca,
            days,
            &mut made,
        )?;
    }
    Ok(made)
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// The CA in `dir`: read back if both files are there, else made.
fn ca(dir: &Path, days: u32, made: &mut Made) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let cert = std::fs::read_to_string(&cert_path)
                .with_context(|| format!("read {}", cert_path.display()))?;
            let key = std::fs::read_to_string(&key_path)
                .with_context(|| format!("read {}", key_path.display()))?;
            let key = KeyPair::from_pem(&key)
                .with_context(|| format!("{}: not a usable private key", key_path.display()))?;
            let issuer = Issuer::from_ca_cert_pem(&cert, key)
                .with_context(|| format!("{}: not a usable CA certificate", cert_path.display()))?;
            made.kept.extend([cert_path, key_path]);
            Ok(issuer)
        }
        (false, false) => {
            let mut params = CertificateParams::new(Vec::<String>::new()).context("CA")?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "mainstay CA");
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            validity(&mut params, days.saturating_mul(10));
            let key = KeyPair::generate().context("generate the CA key")?;
            let cert = params.self_signed(&key).context("sign the CA")?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            std::fs::write(&cert_path, cert.pem())
                .with_context(|| format!("write {}", cert_path.display()))?;
            made.written.extend([cert_path, key_path]);
            Ok(Issuer::new(params, key))
        }
        _ => bail!(
            "{} holds only one of ca.pem and ca-key.pem: restore the other or start in an empty folder",
            dir.display()
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn leaf(
    dir: &Path,
    file: &str,
    common_name: &str,
    hosts: &[String],
    role: Role,
    ca: &Issuer<'static, KeyPair>,
    days: u32,
    made: &mut Made,
) -> anyhow::Result<()> {
    let (cert_path, key_path) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}-key.pem")),
    );
    if cert_path.exists() || key_path.exists() {
        made.kept.extend([cert_path, key_path]);
        return Ok(());
    }
    let mut params = CertificateParams::new(hosts.to_vec())
        .with_context(|| format!("{file}: host names {hosts:?}"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match role {
        Role::Member => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let key = KeyPair::generate().context("generate a key")?;
    let cert = params
        .signed_by(&key, ca)
        .with_context(|| format!("sign {file}"))?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, cert.pem())
        .with_context(|| format!("write {}", cert_path.display()))?;
    made.written.extend([cert_path, key_path]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member's text and its name and hosts, or what the error says.
    type MemberCase<'a> = (&'a str, Result<(&'a str, &'a [&'a str]), &'a str>);

    #[test]
    fn member_and_name_forms() {
        let table: &[MemberCase] = &[
            ("n1=10.0.0.1", Ok(("n1", &["10.0.0.1"]))),
            (
                "n2=10.0.0.2, n2.example.com",
                Ok(("n2", &["10.0.0.2", "n2.example.com"])),
            ),
            ("n1", Err("is not name=host")),
            ("n1=", Err("names no host")),
            ("../x=10.0.0.1", Err("not a usable name")),
            ("=10.0.0.1", Err("not a usable name")),
        ];
        for (text, expected) in table {
            match (CertMember::parse(text), expected) {
                (Ok(got), Ok((name, hosts))) => {
                    assert_eq!(got.name, *name, "{text}");
                    assert_eq!(got.hosts, *hosts, "{text}");
                }
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn files_are_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let members = [CertMember::parse("n1=127.0.0.1,localhost").expect("member")];
        let made = make(dir.path(), &members, &["root".to_string()], 30).expect("make");
        assert_eq!(made.written.len(), 6, "{made:?}");
        let ca_before = std::fs::read(dir.path().join("ca.pem")).expect("ca");
        // A second run adds a member with the same CA and keeps the rest.
        let more = [
            members[0].clone(),
            CertMember::parse("n2=127.0.0.2").expect("member"),
        ];
        let made = make(dir.path(), &more, &["root".to_string()], 30).expect("make again");
        assert_eq!(made.written.len(), 2, "{made:?}");
        assert_eq!(made.kept.len(), 6, "{made:?}");
        assert_eq!(
            std::fs::read(dir.path().join("ca.pem")).expect("ca"),
            ca_before
        );
        // Half a CA is refused, not replaced.
        std::fs::remove_file(dir.path().join("ca-key.pem")).expect("remove");
        let error = make(dir.path(), &more, &[], 30).expect_err("half a CA");
        assert!(error.to_string().contains("only one of"), "{error}");
    }
}
