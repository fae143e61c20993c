//! TLS listeners whose certificate can change while they run: accepts TCP
//! connections and runs each TLS handshake with the server settings in use
//! at that moment ([`Live::current`](super::tls::Live::current)), then hands the established stream to
//! tonic (`serve_with_incoming`, no tonic TLS settings). A reload therefore
//! reaches every new connection and leaves open ones alone.
//!
//! Handshakes run concurrently (one slow client cannot stall the accept
//! loop), at most [`MAX_TLS_HANDSHAKES_IN_FLIGHT`] at a time, each bounded
//! by [`TLS_HANDSHAKE_TIMEOUT`]; a failed handshake only drops that
//! connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

use super::tls::{LiveServerConfig, TLS_HANDSHAKE_TIMEOUT};

/// TLS handshakes one listener runs at once; further connections wait in
/// the kernel's accept queue.
pub const MAX_TLS_HANDSHAKES_IN_FLIGHT: usize = 256;

/// Established connections waiting for tonic to pick them up.
const ACCEPTED_QUEUE: usize = 64;

/// Pause after a failed `accept` (for example out of file descriptors), so
/// the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Connections that finished their TLS handshake, for
/// `serve_with_incoming`. The accept task ends when the stream is dropped
/// (tonic stops serving).
pub fn incoming(
    listener: TcpListener,
    config: LiveServerConfig,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    tokio::spawn(accept_loop(listener, config, tx));
    ReceiverStream::new(rx)
}

/// Accepts until the receiving stream is dropped.
async fn accept_loop(
    listener: TcpListener,
    config: LiveServerConfig,
    tx: mpsc::Sender<Result<TlsStream<TcpStream>, std::io::Error>>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_TLS_HANDSHAKES_IN_FLIGHT));
    loop {
        let permit = tokio::select! {
            p = handshakes.clone().acquire_owned() => p,
            () = tx.closed() => return,
        };
        // The semaphore is never closed.
        let Ok(permit) = permit else { return };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = tx.closed() => return,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                debug!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // Small replies must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(config.current());
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send(Ok(stream)).await;
                }
                Ok(Err(e)) => debug!(%remote, error = %e, "TLS handshake failed"),
                Err(_) => debug!(%remote, "TLS handshake timed out"),
            }
        });
    }
}
