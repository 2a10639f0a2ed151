//! Replays the committed fuzz corpus (seeds and any crash reproducers added later) through
//! the same property checks the fuzz targets run.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} breaks a property", path.display());
        count += 1;
    }
    assert!(count > 0, "no corpus in {}", dir.display());
}

#[test]
fn smtp_command_corpus() {
    replay("smtp_command", smtprelay::fuzzing::smtp_command);
}

#[test]
fn data_receiver_corpus() {
    replay("data_receiver", smtprelay::fuzzing::data_receiver);
}

#[test]
fn config_corpus() {
    replay("config", smtprelay::fuzzing::config);
}
