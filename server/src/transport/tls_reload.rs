//! Certificate rotation: the TLS files are polled every
//! `--tls-reload-interval-ms` and a changed set is put in use for new
//! handshakes and dials ([`TransportTls::swap_in`]), so a rotated
//! Kubernetes Secret takes effect without a restart.
//!
//! Each poll reads every file of both ports and compares the bytes with
//! what the settings in use were built from. A port whose files changed is
//! checked whole before anything is swapped in: every file reads and
//! parses, the key matches the certificate, the CA bundle holds a usable
//! certificate, and the settings built with the other port's files work
//! (the relay dialer combines both). A set that fails (a missing file, a
//! key copied before its certificate, a half-written file) changes
//! nothing: the previous settings keep serving, a warning names the file
//! and the reason, and the next poll tries again. Each port is decided on
//! its own, so a broken client-port Secret never holds back a peer
//! rotation. Nothing here panics or stops a listener.
//!
//! Connections already open keep the certificate they negotiated; only new
//! ones see the new files (peers and clients reconnect on their own
//! schedule).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::tls::{LoadedFiles, LoadedPort, TlsError, TransportTls, read_set};
use crate::metrics::{Metrics, TlsPortLabels, TlsReloadLabels};

/// What one poll decided for one port's files.
#[derive(Debug)]
pub enum Decision {
    /// The files hold what the settings in use were built from.
    Unchanged,
    /// The files changed and the new set is in use for new connections.
    Reloaded,
    /// The files changed but cannot be used; the previous set stays in use.
    Kept(TlsError),
}

/// The decisions of one poll (`None`: the port has no TLS).
#[derive(Debug)]
pub struct PollReport {
    /// The client gRPC port's files.
    pub client: Option<Decision>,
    /// The peer port's files.
    pub peer: Option<Decision>,
}

/// Which port's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    Client,
    Peer,
}

impl Port {
    fn name(self) -> &'static str {
        match self {
            Port::Client => "client",
            Port::Peer => "peer",
        }
    }

    fn get(self, files: &LoadedFiles) -> Option<&LoadedPort> {
        match self {
            Port::Client => files.client.as_ref(),
            Port::Peer => files.peer.as_ref(),
        }
    }

    fn get_mut(self, files: &mut LoadedFiles) -> Option<&mut LoadedPort> {
        match self {
            Port::Client => files.client.as_mut(),
            Port::Peer => files.peer.as_mut(),
        }
    }

    /// Index into per-port arrays.
    fn index(self) -> usize {
        match self {
            Port::Client => 0,
            Port::Peer => 1,
        }
    }
}

/// Polls the TLS files and swaps changed, valid sets into the shared
/// settings.
pub struct Reloader {
    /// Shares its cells with the listeners and dialers.
    tls: TransportTls,
    /// Reload counters; `None` in unit tests.
    metrics: Option<Arc<Metrics>>,
    /// The last warning logged per port (client, peer), so a file that stays
    /// broken is reported once rather than on every poll.
    last_warning: [Option<String>; 2],
}

impl Reloader {
    /// A reloader for the settings `tls` shares (`None` when no port uses TLS).
    pub fn new(tls: &TransportTls, metrics: Option<Arc<Metrics>>) -> Option<Reloader> {
        if tls.loaded.client.is_none() && tls.loaded.peer.is_none() {
            return None;
        }
        Some(Reloader {
            tls: tls.clone(),
            metrics,
            last_warning: [None, None],
        })
    }

    /// Reads every file once and puts each changed, valid port's set in
    /// use. Blocking file reads of a few small files.
    pub fn poll(&mut self) -> PollReport {
        let mut files = self.tls.loaded.clone();
        let mut accepted = None;
        let mut decide = |port: Port| -> Option<Decision> {
            let current = port.get(&files)?;
            let pem = match read_set(port.name(), &current.files) {
                Err(e) => return Some(Decision::Kept(e)),
                Ok(pem) if pem == current.pem => return Some(Decision::Unchanged),
                Ok(pem) => pem,
            };
            let mut trial = files.clone();
            if let Some(slot) = port.get_mut(&mut trial) {
                slot.pem = pem;
            }
            Some(match trial.build() {
                Ok(built) => {
                    files = trial;
                    accepted = Some(built);
                    Decision::Reloaded
                }
                Err(e) => Decision::Kept(e),
            })
        };
        let report = PollReport {
            client: decide(Port::Client),
            peer: decide(Port::Peer),
        };
        if let Some(built) = accepted {
            self.tls.swap_in(built);
            self.tls.loaded = files;
        }
        report
    }

    /// Polls every `interval` until `shutdown`, logging and counting what
    /// each poll decided.
    pub async fn run(mut self, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; the files were just loaded.
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let report = self.poll();
            self.record(Port::Client, report.client, interval);
            self.record(Port::Peer, report.peer, interval);
        }
    }

    /// Logs and counts one port's decision.
    fn record(&mut self, port: Port, decision: Option<Decision>, interval: Duration) {
        let Some(decision) = decision else { return };
        let name = port.name();
        let files = port
            .get(&self.tls.loaded)
            .map(|p| p.pem.files().to_string())
            .unwrap_or_default();
        let last_warning = &mut self.last_warning[port.index()];
        let (outcome, failing) = match decision {
            Decision::Unchanged => {
                *last_warning = None;
                self.set_failing(name, false);
                return;
            }
            Decision::Reloaded => {
                *last_warning = None;
                info!(port = name, %files, "TLS files changed: new connections use the new certificate");
                ("ok", false)
            }
            Decision::Kept(e) => {
                let text = e.to_string();
                if last_warning.as_deref() == Some(text.as_str()) {
                    debug!(port = name, error = %text, "TLS files still unusable");
                } else {
                    warn!(
                        port = name,
                        error = %text,
                        retry_in_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
                        "TLS files changed but cannot be used; the previous certificate stays in use"
                    );
                    *last_warning = Some(text);
                }
                ("failed", true)
            }
        };
        if let Some(m) = &self.metrics {
            m.tls_reloads
                .get_or_create(&TlsReloadLabels {
                    port: name,
                    outcome,
                })
                .inc();
        }
        self.set_failing(name, failing);
    }

    fn set_failing(&self, port: &'static str, failing: bool) {
        if let Some(m) = &self.metrics {
            m.tls_reload_failing
                .get_or_create(&TlsPortLabels { port })
                .set(i64::from(failing));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use titan_testkit::tls::TestCa;

    use super::*;
    use crate::config::TlsFiles;
    use crate::transport::tls::{self, LiveServerConfig};

    /// A port's files in a temporary directory.
    struct Files {
        dir: tempfile::TempDir,
        files: TlsFiles,
    }

    impl Files {
        fn write(&self, name: &str, pem: &str) {
            std::fs::write(self.dir.path().join(name), pem).expect("write PEM");
        }

        /// Replaces the certificate and key (each written whole).
        fn write_leaf(&self, (cert, key): &(String, String)) {
            self.write("cert.pem", cert);
            self.write("key.pem", key);
        }
    }

    fn path(dir: &Path, name: &str) -> PathBuf {
        dir.join(name)
    }

    /// Files holding a leaf of `ca` and, with `with_ca`, the CA itself.
    fn files(ca: &TestCa, leaf: &(String, String), with_ca: bool) -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = TlsFiles {
            cert: path(dir.path(), "cert.pem"),
            key: path(dir.path(), "key.pem"),
            ca: with_ca.then(|| path(dir.path(), "ca.pem")),
        };
        let f = Files { dir, files };
        f.write_leaf(leaf);
        if with_ca {
            f.write("ca.pem", ca.pem());
        }
        f
    }

    /// The leaf certificate (DER) a new handshake with `server` is shown,
    /// verified against `ca` for `localhost` (an in-memory handshake).
    fn served_leaf(server: &LiveServerConfig, ca: &TestCa) -> Vec<u8> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca.pem().as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").expect("name");
        let mut c = ClientConnection::new(Arc::new(config), name).expect("client");
        let current: Arc<ServerConfig> = server.current();
        let mut s = ServerConnection::new(current).expect("server");
        while c.is_handshaking() || s.is_handshaking() {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).expect("client write");
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).expect("server read");
                s.process_new_packets().expect("server handshake");
            }
            let mut buf = Vec::new();
            s.write_tls(&mut buf).expect("server write");
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).expect("client read");
                c.process_new_packets().expect("client handshake");
            }
        }
        c.peer_certificates().expect("server certificate")[0].to_vec()
    }

    fn der(leaf: &(String, String)) -> Vec<u8> {
        CertificateDer::from_pem_slice(leaf.0.as_bytes())
            .expect("leaf PEM")
            .to_vec()
    }

    /// A client-port-only TLS setup (no client certificates) and its reloader.
    fn client_port(ca: &TestCa, leaf: &(String, String)) -> (Files, TransportTls, Reloader) {
        let f = files(ca, leaf, false);
        let tls = tls::load(Some(&f.files), None).expect("valid files");
        let reloader = Reloader::new(&tls, None).expect("TLS in use");
        (f, tls, reloader)
    }

    fn server(tls: &TransportTls) -> &LiveServerConfig {
        tls.client_server.as_ref().expect("client port TLS")
    }

    fn kept(decision: Option<Decision>) -> String {
        match decision {
            Some(Decision::Kept(e)) => e.to_string(),
            other => panic!("expected the old set to be kept, got {other:?}"),
        }
    }

    #[test]
    fn no_tls_means_nothing_to_poll() {
        assert!(Reloader::new(&TransportTls::default(), None).is_none());
    }

    #[test]
    fn unchanged_files_are_not_reloaded() {
        let ca = TestCa::new("ca");
        let first = ca.node_leaf("first");
        let (_f, tls, mut reloader) = client_port(&ca, &first);
        let before = server(&tls).current();
        let report = reloader.poll();
        assert!(
            matches!(report.client, Some(Decision::Unchanged)),
            "{report:?}"
        );
        assert!(report.peer.is_none());
        assert!(Arc::ptr_eq(&before, &server(&tls).current()));
        assert_eq!(served_leaf(server(&tls), &ca), der(&first));
    }

    #[test]
    fn a_changed_valid_set_is_served_to_new_handshakes() {
        let ca = TestCa::new("ca");
        let (first, second) = (ca.node_leaf("first"), ca.node_leaf("second"));
        let (f, tls, mut reloader) = client_port(&ca, &first);
        assert_eq!(tls.forward_dialer.generation(), 0);
        f.write_leaf(&second);
        let report = reloader.poll();
        assert!(
            matches!(report.client, Some(Decision::Reloaded)),
            "{report:?}"
        );
        assert_eq!(served_leaf(server(&tls), &ca), der(&second));
        // Dials present the new certificate too; cached channels see the
        // generation move.
        assert_eq!(tls.forward_dialer.generation(), 1);
        // Nothing changed since: the next poll leaves it alone.
        assert!(matches!(reloader.poll().client, Some(Decision::Unchanged)));
        assert_eq!(tls.forward_dialer.generation(), 1);
    }

    #[test]
    fn a_key_that_does_not_match_keeps_the_old_set_until_the_matching_key_arrives() {
        let ca = TestCa::new("ca");
        let (first, second) = (ca.node_leaf("first"), ca.node_leaf("second"));
        let (f, tls, mut reloader) = client_port(&ca, &first);
        // The certificate is copied first; the key still is the old one.
        f.write("cert.pem", &second.0);
        let error = kept(reloader.poll().client);
        assert!(
            error.contains("cert.pem") && error.contains("key.pem"),
            "{error}"
        );
        assert_eq!(served_leaf(server(&tls), &ca), der(&first));
        assert_eq!(tls.forward_dialer.generation(), 0, "dial settings kept");
        // Still half-written at the next poll: still the old set.
        kept(reloader.poll().client);
        assert_eq!(served_leaf(server(&tls), &ca), der(&first));
        // The key arrives: the next poll puts the new set in use.
        f.write("key.pem", &second.1);
        assert!(matches!(reloader.poll().client, Some(Decision::Reloaded)));
        assert_eq!(served_leaf(server(&tls), &ca), der(&second));
    }

    #[test]
    fn a_missing_file_keeps_the_old_set_and_names_it() {
        let ca = TestCa::new("ca");
        let first = ca.node_leaf("first");
        let (f, tls, mut reloader) = client_port(&ca, &first);
        std::fs::remove_file(&f.files.key).expect("remove key");
        let error = kept(reloader.poll().client);
        assert!(
            error.contains("--client-tls-key") && error.contains("key.pem"),
            "{error}"
        );
        assert_eq!(served_leaf(server(&tls), &ca), der(&first));
    }

    #[test]
    fn a_truncated_certificate_keeps_the_old_set() {
        let ca = TestCa::new("ca");
        let (first, second) = (ca.node_leaf("first"), ca.node_leaf("second"));
        let (f, tls, mut reloader) = client_port(&ca, &first);
        f.write("cert.pem", &second.0[..second.0.len() / 2]);
        let error = kept(reloader.poll().client);
        assert!(error.contains("--client-tls-cert"), "{error}");
        assert_eq!(served_leaf(server(&tls), &ca), der(&first));
    }

    #[test]
    fn a_ca_file_without_a_certificate_keeps_the_old_set() {
        let ca = TestCa::new("ca");
        let leaf = ca.node_leaf("peer");
        let f = files(&ca, &leaf, true);
        let tls = tls::load(None, Some(&f.files)).expect("valid files");
        let mut reloader = Reloader::new(&tls, None).expect("TLS in use");
        let before = tls.peer_server.as_ref().expect("peer TLS").current();
        f.write("ca.pem", "not a certificate\n");
        let error = kept(reloader.poll().peer);
        assert!(error.contains("--peer-tls-ca"), "{error}");
        let after = tls.peer_server.as_ref().expect("peer TLS").current();
        assert!(Arc::ptr_eq(&before, &after));
    }

    #[test]
    fn a_broken_client_port_set_does_not_hold_back_a_peer_rotation() {
        let ca = TestCa::new("ca");
        let (client_leaf, peer_leaf) = (ca.node_leaf("client"), ca.node_leaf("peer"));
        let client = files(&ca, &client_leaf, false);
        let peer = files(&ca, &peer_leaf, true);
        let tls = tls::load(Some(&client.files), Some(&peer.files)).expect("valid files");
        let mut reloader = Reloader::new(&tls, None).expect("TLS in use");
        let peer_before = tls.peer_server.as_ref().expect("peer TLS").current();
        // A new CA and a leaf it signed replace the peer files whole, while
        // the client port's key is replaced by one that fits nothing.
        let new_ca = TestCa::new("new ca");
        peer.write_leaf(&new_ca.node_leaf("peer 2"));
        peer.write("ca.pem", new_ca.pem());
        client.write("key.pem", &ca.node_leaf("stray").1);
        let report = reloader.poll();
        assert!(
            matches!(report.peer, Some(Decision::Reloaded)),
            "{report:?}"
        );
        kept(report.client);
        let peer_after = tls.peer_server.as_ref().expect("peer TLS").current();
        assert!(!Arc::ptr_eq(&peer_before, &peer_after));
        assert_eq!(served_leaf(server(&tls), &ca), der(&client_leaf));
    }
}
