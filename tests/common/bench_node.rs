//! A node for the benches: `policy` compiled and served by one session thread (the per-core
//! figure), admin off. Shared by benches through `#[path]`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Compile `policy` and serve it with one session thread: the node's runtime (one thread) is
/// named `thread_name` and its session thread `{thread_name}-session-0`, so every thread of it
/// starts with `thread_name`. Returns the node's first listener and the runtime (dropping it
/// stops the node).
pub fn start(policy: &Path, thread_name: &str) -> (SocketAddr, tokio::runtime::Runtime) {
    let compiled = mtac_compiler::compile_path(policy);
    let Some(output) = compiled.output else {
        panic!("{:?}", compiled.diagnostics.list.iter().map(|d| &d.message).collect::<Vec<_>>());
    };
    let bytes = output.bytes;
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(thread_name)
        .enable_all()
        .build()
        .unwrap();
    let session_name = format!("{thread_name}-session");
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    server.spawn(async move {
        let loader: mtac_runtime::Loader =
            Arc::new(move || mtac_ruleset::Ruleset::from_vec(bytes.clone()).map_err(|e| e.to_string()));
        let node = mtac_runtime::Node::new(loader.clone()).unwrap();
        let listeners = node.bind(mtac_runtime::AdminAddress::Off).await.unwrap();
        addr_tx.send(listeners.smtp[0].0.local_addr().unwrap()).unwrap();
        let config = mtac_runtime::RunConfig {
            loader,
            watch: None,
            grace: Duration::from_secs(1),
            admin: mtac_runtime::AdminAddress::Off,
            candidate: None,
            session_threads: 1,
            busy_share: mtac_runtime::BUSY_SHARE,
            thread_name: session_name,
        };
        node.run_until(listeners, config, std::future::pending()).await.unwrap();
    });
    (addr_rx.recv().unwrap(), server)
}
