//! Mutual TLS for the agent <-> master QUIC connections: certificate generation (`corral
//! certs`, the throwaway CA of `corral dev`) and the rustls/quinn configurations.
//!
//! Trust model: one cluster CA. The master presents a server certificate for the names agents
//! dial; every agent presents a client certificate signed by the same CA. The master verifies
//! client certificates during the handshake, so a peer without one never gets a stream, and no
//! byte of it reaches the master's message handling. TLS 1.3 only (QUIC requires it).

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocol id of Corral's agent protocol.
pub const ALPN: &[u8] = b"corral/1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no usable PEM {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("tls configuration refused: {0}")]
    Config(String),
}

/// A PEM certificate and its PEM private key.
#[derive(Clone)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPair").field("key_pem", &"<redacted>").finish_non_exhaustive()
    }
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A master: TLS server (and client, for standbys talking to the leader later).
    Master,
    /// An agent: TLS client.
    Agent,
}

/// Makes a new self-signed cluster CA.
pub fn generate_ca(name: &str) -> Result<CertPair, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "Corral");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Issues a leaf certificate signed by `ca`. `names` are DNS names or IP addresses; the first
/// is also the common name.
pub fn issue(ca: &CertPair, usage: Usage, names: &[String]) -> Result<CertPair, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(n.as_str().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names.first().map(String::as_str).unwrap_or("corral"));
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match usage {
        Usage::Master => {
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
        }
        Usage::Agent => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Paths of one party's TLS material.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The layout `corral certs` writes: `DIR/ca.pem`, `DIR/NAME.pem`, `DIR/NAME-key.pem`.
    pub fn in_dir(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        }
    }
}

/// Writes a PEM pair as `DIR/NAME.pem` and `DIR/NAME-key.pem` (key mode 0600).
pub fn write_pair(dir: &Path, name: &str, pair: &CertPair) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    fs::create_dir_all(dir).map_err(|source| TlsError::Write { path: dir.into(), source })?;
    let cert = dir.join(format!("{name}.pem"));
    fs::write(&cert, &pair.cert_pem).map_err(|source| TlsError::Write { path: cert, source })?;
    let key = dir.join(format!("{name}-key.pem"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key)
        .map_err(|source| TlsError::Write { path: key.clone(), source })?;
    f.write_all(pair.key_pem.as_bytes()).map_err(|source| TlsError::Write { path: key, source })
}

/// Reads a PEM pair back.
pub fn read_pair(cert: &Path, key: &Path) -> Result<CertPair, TlsError> {
    let read = |p: &Path| {
        fs::read_to_string(p).map_err(|source| TlsError::Read { path: p.into(), source })
    };
    Ok(CertPair { cert_pem: read(cert)?, key_pem: read(key)? })
}

struct Material {
    roots: rustls::RootCertStore,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn load(files: &TlsFiles) -> Result<Material, TlsError> {
    let read = |p: &Path| fs::read(p).map_err(|source| TlsError::Read { path: p.into(), source });
    let pem_err = |p: &Path, what| TlsError::Pem { path: p.into(), what };
    let ca_pem = read(&files.ca)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca_pem) {
        let c = c.map_err(|_| pem_err(&files.ca, "certificate"))?;
        roots.add(c).map_err(|e| TlsError::Config(format!("{}: {e}", files.ca.display())))?;
    }
    if roots.is_empty() {
        return Err(pem_err(&files.ca, "certificate"));
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&files.cert)?)
        .collect::<Result<_, _>>()
        .map_err(|_| pem_err(&files.cert, "certificate"))?;
    if chain.is_empty() {
        return Err(pem_err(&files.cert, "certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
        .map_err(|_| pem_err(&files.key, "private key"))?;
    Ok(Material { roots, chain, key })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport(keep_alive: Duration, idle: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(keep_alive));
    t.max_idle_timeout(Some(idle.try_into().expect("idle timeout fits a QUIC varint")));
    Arc::new(t)
}

/// The master's QUIC server configuration: its certificate, and a verifier that refuses any
/// client without a certificate signed by the cluster CA.
pub fn server_config(files: &TlsFiles) -> Result<quinn::ServerConfig, TlsError> {
    let m = load(files)?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(m.roots), provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(m.chain, m.key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(Duration::from_secs(2), Duration::from_secs(10)));
    Ok(config)
}

/// An agent's QUIC client configuration: trusts only the cluster CA and presents the agent's
/// certificate.
pub fn client_config(files: &TlsFiles) -> Result<quinn::ClientConfig, TlsError> {
    let m = load(files)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(m.roots)
        .with_client_auth_cert(m.chain, m.key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(Duration::from_secs(2), Duration::from_secs(10)));
    Ok(config)
}

/// A client configuration that presents no certificate (for tests that prove the master
/// refuses such peers).
pub fn client_config_without_cert(ca: &Path) -> Result<quinn::ClientConfig, TlsError> {
    let ca_pem = fs::read(ca).map_err(|source| TlsError::Read { path: ca.into(), source })?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca_pem) {
        let c = c.map_err(|_| TlsError::Pem { path: ca.into(), what: "certificate" })?;
        roots.add(c).map_err(|e| TlsError::Config(e.to_string()))?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// Writes a complete cluster's material into `dir`: `ca.pem`/`ca-key.pem`,
/// `master.pem`/`master-key.pem` for `master_names`, and `agent.pem`/`agent-key.pem`.
pub fn write_cluster(dir: &Path, master_names: &[String]) -> Result<(), TlsError> {
    let ca = generate_ca("Corral cluster CA")?;
    write_pair(dir, "ca", &ca)?;
    write_pair(dir, "master", &issue(&ca, Usage::Master, master_names)?)?;
    write_pair(dir, "agent", &issue(&ca, Usage::Agent, &["corral-agent".to_string()])?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_loads_into_configs() {
        let dir = std::env::temp_dir().join(format!("corral-tls-{}", std::process::id()));
        write_cluster(&dir, &["localhost".into(), "127.0.0.1".into()]).unwrap();
        server_config(&TlsFiles::in_dir(&dir, "master")).unwrap();
        client_config(&TlsFiles::in_dir(&dir, "agent")).unwrap();
        client_config_without_cert(&dir.join("ca.pem")).unwrap();
        let bad = TlsFiles { key: dir.join("ca.pem"), ..TlsFiles::in_dir(&dir, "agent") };
        assert!(matches!(client_config(&bad), Err(TlsError::Pem { .. })));
        let _ = fs::remove_dir_all(&dir);
    }
}
