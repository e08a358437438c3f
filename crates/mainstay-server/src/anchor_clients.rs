//! A client certificate that *is* one of the trusted CA certificates
//! (`--trusted-ca-file`), presented as its own end entity: Go's TLS stack
//! accepts it (etcd's e2e suite uses a self-signed CA certificate with CN
//! `root` as server, CA and client certificate at once); webpki refuses a CA
//! certificate as an end entity. `is_trusted_anchor` picks out exactly that case,
//! byte for byte equal to a trusted certificate and inside its validity
//! period; `peer_names::NamedPeers` accepts it and hands everything else to
//! webpki's verifier. The holder of
//! that CA's key can issue any client certificate anyway, so this grants no
//! one more than they already have. The handshake still proves that the
//! client holds the certificate's private key.

/// Whether `end_entity` is byte for byte one of `anchors` and valid at
/// `now` (seconds since the epoch).
pub fn is_trusted_anchor(end_entity: &[u8], anchors: &[Vec<u8>], now: i64) -> bool {
    if !anchors.iter().any(|anchor| anchor.as_slice() == end_entity) {
        return false;
    }
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(end_entity) else {
        return false;
    };
    let validity = cert.validity();
    validity.not_before.timestamp() <= now && now <= validity.not_after.timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(days_valid: i64) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(2);
        params.not_after = now + time::Duration::days(days_valid);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn only_a_valid_certificate_equal_to_an_anchor_passes() {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let anchor = certificate(30);
        let expired = certificate(-1);
        let other = certificate(30);
        let anchors = vec![anchor.clone(), expired.clone()];
        let table: [(&[u8], bool, &str); 4] = [
            (&anchor, true, "the anchor itself"),
            (&expired, false, "an expired anchor"),
            (&other, false, "a certificate that is not an anchor"),
            (b"garbage", false, "bytes that are no certificate"),
        ];
        for (end_entity, want, case) in table {
            assert_eq!(is_trusted_anchor(end_entity, &anchors, now), want, "{case}");
        }
        assert!(!is_trusted_anchor(&anchor, &[], now), "no anchors");
    }
}
