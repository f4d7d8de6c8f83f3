//! The client side of the admin endpoints, for `mtac status`, `mtac state` and the tests: one
//! HTTP/1.1 request without a body, over TCP or the admin socket, bounded by a timeout; and for
//! `mtac trace`, a streamed answer read as it comes.

use hyper::body::Bytes;
use hyper::{Method, Request};
use std::path::Path;
use std::time::Duration;

/// Ask the admin socket at `socket`: `method` `path` (used by `mtac state` and the tests).
/// Returns the status code and the body.
pub async fn ask_socket(socket: &Path, method: Method, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let work = async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
        exchange(stream, method, path, "localhost").await
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| "no answer in time".to_owned())?
}

/// GET `path` from an admin listener at `address` (used by `mtac status` and the tests).
/// Returns the status code and the body.
pub async fn get(address: &str, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let work = async {
        let stream = tokio::net::TcpStream::connect(address).await.map_err(|e| format!("cannot connect: {e}"))?;
        exchange(stream, Method::GET, path, address).await
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| "no answer in time".to_owned())?
}

/// One HTTP/1.1 request without a body on `stream`: the status code and the body.
async fn exchange<S>(stream: S, method: Method, path: &str, host: &str) -> Result<(u16, String), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, host)
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| format!("HTTP: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| format!("HTTP: {e}"))?.to_bytes();
    driver.abort();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `GET path` on the admin socket at `socket`, handing each chunk of the body to `chunk` as it
/// arrives (`mtac trace`), until the node closes or `chunk` says stop. An answer other than 200
/// is an error with its body.
pub async fn stream_socket(socket: &Path, path: &str, mut chunk: impl FnMut(&[u8]) -> bool) -> Result<(), String> {
    use http_body_util::BodyExt;
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(connection);
    let request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(hyper::header::HOST, "localhost")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| format!("HTTP: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"))?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    if status != 200 {
        let text = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        driver.abort();
        return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&text).trim_end()));
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("HTTP: {e}"))?;
        if let Some(data) = frame.data_ref() {
            if !chunk(data) {
                break;
            }
        }
    }
    driver.abort();
    Ok(())
}
