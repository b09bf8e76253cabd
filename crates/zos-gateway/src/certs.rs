//! Certificates of the gateway: issued by a local dev CA (`zos up`) or by an ACME CA (real
//! deployments), kept in the node's cache directory, served by SNI, renewed before expiry.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Errors of certificate handling.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Making or parsing a certificate or key.
    #[error("certificate: {0}")]
    Pki(String),
    /// The ACME exchange failed.
    #[error("acme: {0}")]
    Acme(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn pki(e: impl std::fmt::Display) -> CertError {
    CertError::Pki(e.to_string())
}

/// Writes `data` to `path` through a temporary file (readers never see half a key).
fn write_atomic(path: &Path, data: &str, mode: u32) -> Result<(), CertError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(io_err(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// A local certificate authority for development grids: its certificate is what clients
/// trust (`curl --cacert`); it signs the gateway's certificates.
#[derive(Debug, Clone)]
pub struct DevCa {
    /// The CA certificate (PEM).
    pub cert: PathBuf,
    /// The CA key (PEM, owner only).
    pub key: PathBuf,
}

impl DevCa {
    /// File names of a CA in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        DevCa {
            cert: dir.join("gateway-ca.pem"),
            key: dir.join("gateway-ca-key.pem"),
        }
    }

    /// Loads the CA in `dir`, or makes one (10 years) when there is none.
    pub fn load_or_create(dir: &Path) -> Result<Self, CertError> {
        let ca = Self::in_dir(dir);
        if ca.cert.is_file() && ca.key.is_file() {
            return Ok(ca);
        }
        let key = rcgen::KeyPair::generate().map_err(pki)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(pki)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "zos gateway dev CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key).map_err(pki)?;
        write_atomic(&ca.key, &key.serialize_pem(), 0o600)?;
        write_atomic(&ca.cert, &cert.pem(), 0o644)?;
        Ok(ca)
    }

    /// Issues a certificate for `names` valid `days` days: `(chain PEM, key PEM)`.
    pub fn issue(&self, names: &[String], days: i64) -> Result<(String, String), CertError> {
        let ca_pem = std::fs::read_to_string(&self.cert).map_err(io_err(&self.cert))?;
        let ca_key_pem = std::fs::read_to_string(&self.key).map_err(io_err(&self.key))?;
        let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem).map_err(pki)?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(pki)?;
        let key = rcgen::KeyPair::generate().map_err(pki)?;
        let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(pki)?;
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, first.as_str());
        }
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(days);
        params.use_authority_key_identifier_extension = true;
        params
            .extended_key_usages
            .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        let cert = params.signed_by(&key, &issuer).map_err(pki)?;
        Ok((format!("{}{ca_pem}", cert.pem()), key.serialize_pem()))
    }
}

/// Where certificates come from.
#[derive(Debug, Clone)]
pub enum Issuer {
    /// A local dev CA: wildcard certificates for the node domain, immediate.
    DevCa {
        /// The CA.
        ca: DevCa,
        /// Validity of issued certificates.
        days: i64,
    },
    /// An ACME CA (Let's Encrypt) with HTTP-01 challenges answered by the gateway's HTTP
    /// listener: one certificate per served host (a wildcard would need DNS-01).
    Acme(crate::acme::AcmeConfig),
}

impl Issuer {
    /// Whether a node domain is covered by one wildcard certificate (`*.domain`).
    pub fn wildcards(&self) -> bool {
        matches!(self, Issuer::DevCa { .. })
    }
}

/// A certificate in use.
struct Entry {
    key: Arc<CertifiedKey>,
    not_after: SystemTime,
}

/// The certificates the gateway serves, by the name they are for (`*.domain` or a host).
pub struct CertStore {
    issuer: Issuer,
    dir: PathBuf,
    renew_before: Duration,
    certs: RwLock<HashMap<String, Entry>>,
    /// HTTP-01 tokens → key authorizations, served by the HTTP listener during an order.
    pub(crate) challenges: Arc<Mutex<BTreeMap<String, String>>>,
    /// One issuance at a time (ACME orders are slow; two for one name would race).
    issuing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("dir", &self.dir)
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// File-safe form of a certificate name (`*.gw.example` → `_wildcard.gw.example`).
fn file_stem(name: &str) -> String {
    name.replace('*', "_wildcard")
}

/// The `not_after` of the first certificate in a PEM chain.
pub fn not_after(chain_pem: &str) -> Result<SystemTime, CertError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes()).map_err(pki)?;
    let cert = pem.parse_x509().map_err(pki)?;
    let t = cert.validity().not_after.timestamp();
    Ok(UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0)))
}

fn certified_key(chain_pem: &str, key_pem: &str) -> Result<CertifiedKey, CertError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(pki)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pki)?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(pki)?;
    Ok(CertifiedKey::new(chain, signing))
}

impl CertStore {
    /// A store keeping its files in `dir`; certificates are renewed when they have less than
    /// `renew_before` left.
    pub fn new(issuer: Issuer, dir: PathBuf, renew_before: Duration) -> Self {
        CertStore {
            issuer,
            dir,
            renew_before,
            certs: RwLock::new(HashMap::new()),
            challenges: Arc::new(Mutex::new(BTreeMap::new())),
            issuing: tokio::sync::Mutex::new(()),
        }
    }

    /// The issuer.
    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    /// The certificate name that serves `host` of a node domain `domain` (`*.domain` with a
    /// dev CA, the host itself with ACME), or `host` for an FQDN proxy (`domain` None).
    pub fn name_for(&self, host: &str, domain: Option<&str>) -> String {
        match domain {
            Some(d) if self.issuer.wildcards() => format!("*.{d}"),
            _ => host.to_string(),
        }
    }

    fn paths(&self, name: &str) -> (PathBuf, PathBuf) {
        let stem = file_stem(name);
        (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}-key.pem")),
        )
    }

    /// Makes sure a valid certificate for `name` is served: from memory, from the cache
    /// directory, or newly issued (and cached). Renews one that expires within the renewal
    /// window.
    pub async fn ensure(&self, name: &str) -> Result<(), CertError> {
        let fresh = |t: SystemTime| {
            t.duration_since(SystemTime::now())
                .is_ok_and(|left| left > self.renew_before)
        };
        if self.read().get(name).is_some_and(|e| fresh(e.not_after)) {
            return Ok(());
        }
        let _one = self.issuing.lock().await;
        let (cert_path, key_path) = self.paths(name);
        if let (Ok(chain), Ok(key)) = (
            std::fs::read_to_string(&cert_path),
            std::fs::read_to_string(&key_path),
        ) {
            match (not_after(&chain), certified_key(&chain, &key)) {
                (Ok(t), Ok(ck)) if fresh(t) => {
                    self.insert(name, ck, t);
                    return Ok(());
                }
                (Ok(_), Ok(_)) => tracing::info!(name, "certificate expires soon: renewing"),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(name, error = %e, "cached certificate unusable: issuing again")
                }
            }
        }
        let names = if let Some(base) = name.strip_prefix("*.") {
            vec![name.to_string(), base.to_string()]
        } else {
            vec![name.to_string()]
        };
        let (chain, key) = match &self.issuer {
            Issuer::DevCa { ca, days } => ca.issue(&names, *days)?,
            Issuer::Acme(cfg) => crate::acme::order(cfg, &names, &self.challenges).await?,
        };
        let t = not_after(&chain)?;
        let ck = certified_key(&chain, &key)?;
        write_atomic(&key_path, &key, 0o600)?;
        write_atomic(&cert_path, &chain, 0o644)?;
        tracing::info!(name, "certificate issued");
        self.insert(name, ck, t);
        Ok(())
    }

    /// Renews every certificate in use that expires within the renewal window.
    pub async fn renew_all(&self) {
        let names: Vec<String> = self.read().keys().cloned().collect();
        for n in names {
            if let Err(e) = self.ensure(&n).await {
                tracing::warn!(name = %n, error = %e, "certificate renewal failed");
            }
        }
    }

    /// Stops serving the certificate `name` (its files stay cached).
    pub fn forget(&self, name: &str) {
        self.certs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Expiry of the served certificate `name`.
    pub fn expiry(&self, name: &str) -> Option<SystemTime> {
        self.read().get(name).map(|e| e.not_after)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.certs.read().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, name: &str, ck: CertifiedKey, not_after: SystemTime) {
        self.certs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                name.to_string(),
                Entry {
                    key: Arc::new(ck),
                    not_after,
                },
            );
    }

    /// The certificate for `host`: its own, else the wildcard of its parent domain.
    pub fn lookup(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let certs = self.read();
        if let Some(e) = certs.get(host) {
            return Some(e.key.clone());
        }
        let parent = host.split_once('.')?.1;
        certs.get(&format!("*.{parent}")).map(|e| e.key.clone())
    }
}

/// rustls' view of the store: the certificate by SNI.
#[derive(Debug)]
pub(crate) struct Resolver(pub Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        self.0.lookup(&name)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn dev_ca_issues_cached_wildcards_and_renews_them() {
        let d = tempfile::tempdir().unwrap();
        let ca = DevCa::load_or_create(d.path()).unwrap();
        let again = DevCa::load_or_create(d.path()).unwrap();
        assert_eq!(
            std::fs::read(&ca.cert).unwrap(),
            std::fs::read(&again.cert).unwrap(),
            "an existing CA is kept"
        );
        let dir = d.path().join("certs");
        // Valid 10 days, renewed when less than 20 are left: every ensure issues again.
        let store = CertStore::new(
            Issuer::DevCa {
                ca: ca.clone(),
                days: 10,
            },
            dir.clone(),
            Duration::from_secs(20 * 86400),
        );
        let name = store.name_for("web.gw.test", Some("gw.test"));
        assert_eq!(name, "*.gw.test");
        store.ensure(&name).await.unwrap();
        assert!(store.lookup("web.gw.test").is_some());
        assert!(store.lookup("gw.test").is_none());
        assert!(store.lookup("a.b.gw.test").is_none(), "one level only");
        let first = std::fs::read(dir.join("_wildcard.gw.test.pem")).unwrap();
        store.ensure(&name).await.unwrap();
        let second = std::fs::read(dir.join("_wildcard.gw.test.pem")).unwrap();
        assert_ne!(first, second, "a certificate inside the window is renewed");

        // A long-lived one is served from the cache by a new store (a node restart).
        let store = CertStore::new(
            Issuer::DevCa { ca, days: 90 },
            dir.clone(),
            Duration::from_secs(86400),
        );
        store.ensure("x.example.org").await.unwrap();
        let cached = std::fs::read(dir.join("x.example.org.pem")).unwrap();
        let restarted = CertStore::new(
            store.issuer().clone(),
            dir.clone(),
            Duration::from_secs(86400),
        );
        restarted.ensure("x.example.org").await.unwrap();
        assert_eq!(
            std::fs::read(dir.join("x.example.org.pem")).unwrap(),
            cached
        );
        let left = restarted
            .expiry("x.example.org")
            .unwrap()
            .duration_since(SystemTime::now())
            .unwrap();
        assert!(left > Duration::from_secs(89 * 86400), "{left:?}");
    }
}
