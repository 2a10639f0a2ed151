//! Writes a large queue straight into a spool, for `benchmarks/backlog.sh`: a million
//! messages through SMTP take longer than the measurement they are for. Each file is what
//! intake writes (the same header and trailer code), without the fsyncs.
//!
//!     cargo run --release --example fill_spool -- SPOOL_DIR COUNT [SIZE]
//!
//! SIZE is the content's length in bytes (default 2048). The relay must not be running.

use std::io::Write;

use smtprelay::queue::message_file::{encode_header, encode_trailer};
use smtprelay::queue::{ClientInfo, Envelope, QueueId};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let spool = std::path::PathBuf::from(&args[1]);
    let count: usize = args[2].parse().expect("COUNT is a number");
    let size: usize = args
        .get(3)
        .map_or(2048, |s| s.parse().expect("SIZE is a number"));
    let queue = spool.join("queue");
    std::fs::create_dir_all(&queue).unwrap();
    let line = "x".repeat(76) + "\r\n";
    let mut content = b"Subject: backlog\r\nFrom: <app@bench.example>\r\n\r\n".to_vec();
    while content.len() < size {
        content.extend_from_slice(line.as_bytes());
    }
    content.truncate(size.max(4));
    content.truncate(content.len() - 2);
    content.extend_from_slice(b"\r\n");
    let crc = crc32fast::hash(&content);
    let trailer = encode_trailer(content.len() as u64, crc);
    for n in 0..count {
        let envelope = Envelope {
            id: QueueId::generate(),
            received_at: smtprelay::clock::unix_ms(),
            sender: format!("app{}@bench.example", n % 100),
            recipients: vec![format!("someone{n}@fabrikam.example")],
            smtputf8: false,
            eight_bit: false,
            client: ClientInfo {
                address: std::net::Ipv4Addr::LOCALHOST.into(),
                helo: "bench-client".into(),
                user: None,
                tls: false,
            },
            is_dsn: false,
            account: None,
        };
        let mut bytes = encode_header(&envelope);
        bytes.extend_from_slice(&content);
        bytes.extend_from_slice(&trailer);
        let path = queue.join(format!("{}.msg", envelope.id));
        std::fs::File::create(&path)
            .and_then(|mut file| file.write_all(&bytes))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}
