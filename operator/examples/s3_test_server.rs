//! An S3-compatible server over a directory (`s3s-fs`), for tests that
//! need one outside a Rust test process: the e2e scenario on real pods
//! backs a cluster up into it and restores a new cluster from it.
//!
//! `s3_test_server ADDR ROOT ACCESS_KEY SECRET_KEY BUCKET...` serves until
//! killed. Each bucket is a directory under ROOT, and each object is a file
//! under its bucket's directory at its key, so a test can damage an object
//! in place. Test use only: one static credential, no TLS.

use std::net::SocketAddr;
use std::path::PathBuf;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, root, access_key, secret_key, buckets @ ..] = args.as_slice() else {
        return Err("usage: s3_test_server ADDR ROOT ACCESS_KEY SECRET_KEY BUCKET...".into());
    };
    let addr: SocketAddr = addr.parse()?;
    let root = PathBuf::from(root);
    for bucket in buckets {
        std::fs::create_dir_all(root.join(bucket))?;
    }
    let fs = s3s_fs::FileSystem::new(&root).map_err(|e| format!("{e:?}"))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(
        access_key.as_str(),
        secret_key.as_str(),
    ));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("s3_test_server listening on {}", listener.local_addr()?);
    let http = ConnBuilder::new(TokioExecutor::new());
    loop {
        let (socket, _) = listener.accept().await?;
        let conn = http
            .serve_connection(TokioIo::new(socket), service.clone())
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
