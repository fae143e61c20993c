//! A fault-injecting TCP proxy for one directed peer link. When blocked it
//! drops every open connection and refuses to forward new ones, which looks
//! to both ends like a network partition.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Forwards `127.0.0.1:port()` to `127.0.0.1:target`.
pub struct Proxy {
    port: u16,
    blocked: Arc<AtomicBool>,
    /// Open connection pairs, closed when the proxy blocks.
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Starts a proxy thread.
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let blocked = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, c, s) = (blocked.clone(), conns.clone(), stop.clone());
        std::thread::spawn(move || accept_loop(listener, target, b, c, s));
        Proxy {
            port,
            blocked,
            conns,
            stop,
        }
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Blocks or unblocks the link.
    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::SeqCst);
        if blocked {
            let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            for c in conns.drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.set_blocked(true);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn accept_loop(
    listener: TcpListener,
    target: u16,
    blocked: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
) {
    for inbound in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(inbound) = inbound else { continue };
        if blocked.load(Ordering::SeqCst) {
            let _ = inbound.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(outbound) =
            TcpStream::connect_timeout(&([127, 0, 0, 1], target).into(), Duration::from_secs(1))
        else {
            continue;
        };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        {
            let mut c = conns.lock().unwrap_or_else(|e| e.into_inner());
            c.retain(|s| s.peer_addr().is_ok());
            if let (Ok(a), Ok(b)) = (inbound.try_clone(), outbound.try_clone()) {
                c.push(a);
                c.push(b);
            }
        }
        pump(inbound.try_clone(), outbound.try_clone(), blocked.clone());
        pump(Ok(outbound), Ok(inbound), blocked.clone());
    }
}

fn pump(
    from: std::io::Result<TcpStream>,
    to: std::io::Result<TcpStream>,
    blocked: Arc<AtomicBool>,
) {
    let (Ok(mut from), Ok(mut to)) = (from, to) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if blocked.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
