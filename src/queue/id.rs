//! Queue IDs: ULIDs, so they are unique without coordination and sort by arrival time
//! (monotonic within a millisecond), which keeps `queue list` and the spool directory in order.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(ulid::Ulid);

static GENERATOR: Mutex<Option<ulid::Generator>> = Mutex::new(None);

impl QueueId {
    /// A new ID, greater than every ID this process made before.
    pub fn generate() -> QueueId {
        let mut generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
        let generator = generator.get_or_insert_with(ulid::Generator::new);
        // The generator fails only when 2^80 IDs are made in one millisecond; fall back to a
        // random one rather than fail intake.
        QueueId(generator.generate().unwrap_or_else(|_| ulid::Ulid::new()))
    }

    /// Milliseconds since the Unix epoch at which the ID was made.
    pub fn timestamp_ms(&self) -> u64 {
        self.0.timestamp_ms()
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for QueueId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        ulid::Ulid::from_string(text)
            .map(QueueId)
            .map_err(|_| format!("{text:?} is not a queue ID"))
    }
}

impl serde::Serialize for QueueId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for QueueId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_sorted() {
        let ids: Vec<QueueId> = (0..10_000).map(|_| QueueId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let text = ids[0].to_string();
        assert_eq!(text.len(), 26);
        assert_eq!(text.parse::<QueueId>().unwrap(), ids[0]);
        assert!("not-an-id".parse::<QueueId>().is_err());
    }
}
