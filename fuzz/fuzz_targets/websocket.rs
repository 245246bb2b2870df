//! Any bytes as what a client sends a WebSocket listener: the HTTP upgrade, then
//! frames. The adapter answers or refuses the upgrade and turns frames into bytes or an
//! error, never panicking or waiting for more than was sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir::listener::ws::{self, WsSettings};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let settings = WsSettings {
        path: "/mqtt".into(),
        allowed_origins: Vec::new(),
        max_message: 4096,
    };
    runtime().block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(data).await.expect("duplex write");
        client.shutdown().await.expect("duplex shutdown");
        let run = async {
            let mut drain = tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = client.read_to_end(&mut sink).await;
            });
            if let Ok(mut stream) = ws::accept(server, &settings).await {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            }
            let _ = (&mut drain).await;
        };
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the adapter waited for bytes that were never coming");
    });
});
