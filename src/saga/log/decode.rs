//! The one place where what a backend stored becomes records again.
//!
//! Every backend reads a saga's records through a [`RecordDecoder`] and its
//! state and owner columns through [`stored_state`] and [`stored_owner`],
//! so that what counts as a corrupt log ([`LogError::Corrupt`], with the
//! saga's id and the record's sequence number) is decided here and
//! nowhere else.

use std::time::SystemTime;

use super::LogError;
use crate::saga::id::{OwnerId, SagaId};
use crate::saga::record::{LoggedRecord, RecordKind, SagaState};

/// One record's columns as a SQL backend stores them
/// ([`RecordKind::to_parts`] plus its position, writer and time).
// Only the SQL backends store records as columns.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
#[derive(Debug, Clone)]
pub(crate) struct StoredRecord {
    pub(crate) seq: i64,
    pub(crate) epoch: i64,
    pub(crate) at: SystemTime,
    pub(crate) kind: String,
    pub(crate) body: String,
    pub(crate) payload: Option<Vec<u8>>,
}

/// Reads one saga's records in order, checking that they are numbered
/// from 0 without gaps, that the first is [`RecordKind::SagaCreated`] and
/// that each one reads back.
#[derive(Debug)]
pub(crate) struct RecordDecoder {
    saga: SagaId,
    records: Vec<LoggedRecord>,
}

impl RecordDecoder {
    pub(crate) fn new(saga: SagaId) -> Self {
        Self {
            saga,
            records: Vec::new(),
        }
    }

    fn next_seq(&self) -> u64 {
        self.records.len() as u64
    }

    /// Decodes the next stored record.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn push_stored(&mut self, stored: StoredRecord) -> Result<(), LogError> {
        let seq = self.check_seq(u64::try_from(stored.seq).ok(), &stored.seq)?;
        let kind = RecordKind::from_parts(&stored.kind, &stored.body, stored.payload)
            .map_err(|detail| corrupt(self.saga, Some(seq), detail))?;
        self.check_first(&kind)?;
        let epoch = stored_u64(self.saga, stored.epoch, "record epoch")?;
        self.records.push(LoggedRecord {
            seq,
            epoch,
            at: stored.at,
            kind,
        });
        Ok(())
    }

    /// Checks the next record of a backend that keeps records as they are
    /// (the memory log) the same way.
    pub(crate) fn push(&mut self, record: LoggedRecord) -> Result<(), LogError> {
        self.check_seq(Some(record.seq), &record.seq)?;
        self.check_first(&record.kind)?;
        self.records.push(record);
        Ok(())
    }

    fn check_first(&self, kind: &RecordKind) -> Result<(), LogError> {
        if self.records.is_empty() && !matches!(kind, RecordKind::SagaCreated { .. }) {
            return Err(corrupt(
                self.saga,
                Some(0),
                format!("the first record is `{}`, not `saga_created`", kind.name()),
            ));
        }
        Ok(())
    }

    /// The next sequence number, if `seq` is it.
    fn check_seq(&self, seq: Option<u64>, shown: &dyn std::fmt::Display) -> Result<u64, LogError> {
        let want = self.next_seq();
        if seq == Some(want) {
            return Ok(want);
        }
        Err(corrupt(
            self.saga,
            Some(want),
            format!("record {want} is missing (the next stored one is {shown})"),
        ))
    }

    /// The records read so far.
    pub(crate) fn finish(self) -> Vec<LoggedRecord> {
        self.records
    }

    /// The records read so far, which must be the `expected` number the
    /// saga's row counts.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn finish_expecting(self, expected: u64) -> Result<Vec<LoggedRecord>, LogError> {
        let found = self.next_seq();
        if found != expected {
            return Err(corrupt(
                self.saga,
                Some(found),
                format!("the saga has {expected} records but {found} are stored"),
            ));
        }
        Ok(self.records)
    }
}

/// A [`LogError::Corrupt`] for `saga`.
pub(crate) fn corrupt(saga: SagaId, seq: Option<u64>, detail: impl Into<String>) -> LogError {
    LogError::Corrupt {
        saga,
        seq,
        detail: detail.into(),
    }
}

/// A stored counter (epoch, sequence number, record count) as `u64`.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn stored_u64(saga: SagaId, value: i64, what: &str) -> Result<u64, LogError> {
    u64::try_from(value).map_err(|_| corrupt(saga, None, format!("negative {what} {value}")))
}

/// A stored saga state, by [`SagaState::as_str`] name.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn stored_state(saga: SagaId, state: &str) -> Result<SagaState, LogError> {
    SagaState::from_name(state)
        .ok_or_else(|| corrupt(saga, None, format!("unknown saga state {state:?}")))
}

/// A stored lease owner.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn stored_owner(saga: SagaId, owner: &str) -> Result<OwnerId, LogError> {
    OwnerId::new(owner).map_err(|_| corrupt(saga, None, format!("invalid owner {owner:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(seq: i64, record: &RecordKind) -> StoredRecord {
        let parts = record.to_parts();
        StoredRecord {
            seq,
            epoch: 1,
            at: SystemTime::UNIX_EPOCH,
            kind: parts.kind.into(),
            body: parts.body,
            payload: parts.payload.map(<[u8]>::to_vec),
        }
    }

    fn created() -> RecordKind {
        RecordKind::SagaCreated {
            definition: "d".into(),
            version: 1,
            input: vec![],
        }
    }

    fn decode(rows: Vec<StoredRecord>, expected: u64) -> Result<Vec<LoggedRecord>, LogError> {
        let mut decoder = RecordDecoder::new(SagaId::from_u128(7));
        for row in rows {
            decoder.push_stored(row)?;
        }
        decoder.finish_expecting(expected)
    }

    fn is_corrupt_at(result: &Result<Vec<LoggedRecord>, LogError>, at: u64) -> bool {
        matches!(result, Err(LogError::Corrupt { saga, seq: Some(seq), .. })
            if *saga == SagaId::from_u128(7) && *seq == at)
    }

    #[test]
    fn records_numbered_from_zero_without_gaps_decode() {
        let rows = vec![stored(0, &created()), stored(1, &RecordKind::StuckRetried)];
        assert_eq!(decode(rows, 2).unwrap().len(), 2);
    }

    #[test]
    fn gaps_missing_records_and_a_wrong_first_record_are_corrupt() {
        let gap = decode(
            vec![stored(0, &created()), stored(2, &RecordKind::StuckRetried)],
            3,
        );
        assert!(is_corrupt_at(&gap, 1), "{gap:?}");
        let short = decode(vec![stored(0, &created())], 2);
        assert!(is_corrupt_at(&short, 1), "{short:?}");
        let first = decode(vec![stored(0, &RecordKind::StuckRetried)], 1);
        assert!(is_corrupt_at(&first, 0), "{first:?}");
        let mut bad = stored(1, &RecordKind::StuckRetried);
        bad.kind = "no_such_kind".into();
        let unknown = decode(vec![stored(0, &created()), bad], 2);
        assert!(is_corrupt_at(&unknown, 1), "{unknown:?}");
    }

    #[test]
    fn negative_numbers_are_corrupt_not_clamped() {
        let negative_seq = decode(vec![stored(-1, &created())], 1);
        assert!(is_corrupt_at(&negative_seq, 0), "{negative_seq:?}");
        let mut negative_epoch = stored(0, &created());
        negative_epoch.epoch = -3;
        let result = decode(vec![negative_epoch], 1);
        assert!(
            matches!(&result, Err(LogError::Corrupt { detail, .. }) if detail.contains("epoch")),
            "{result:?}"
        );
    }

    #[test]
    fn stored_states_and_owners_are_checked() {
        let saga = SagaId::from_u128(7);
        assert_eq!(stored_state(saga, "stuck").unwrap(), SagaState::Stuck);
        assert!(matches!(
            stored_state(saga, "sleeping"),
            Err(LogError::Corrupt { seq: None, .. })
        ));
        assert!(stored_owner(saga, "").is_err());
    }
}
