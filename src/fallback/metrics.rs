//! A point-in-time view of a fallback.

/// A snapshot of a fallback, from [`Fallback::metrics`](super::Fallback::metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FallbackMetrics {
    /// Calls answered by the static value, ever.
    pub answered_by_value: u64,
    /// Calls answered by the function of the failure, ever.
    pub answered_by_function: u64,
    /// Calls answered by the last good response for their key, ever.
    pub answered_by_last_good: u64,
    /// Calls to be answered by the last good response whose key had none,
    /// ever (the failure passed through).
    pub no_last_good: u64,
    /// Of the calls answered, those an inner layer had rejected, ever.
    pub answered_rejections: u64,
    /// Keys with a last good response kept now, over every layer built
    /// from this handle.
    pub last_good_entries: usize,
}

impl FallbackMetrics {
    /// Calls answered by the fallback, ever.
    pub fn answered(&self) -> u64 {
        self.answered_by_value + self.answered_by_function + self.answered_by_last_good
    }
}

/// The fallback's handles into the `metrics` facade (see
/// [`crate::metrics`]), taken once when the fallback is created. Without
/// the `metrics` feature it is zero-sized and its methods are empty.
#[cfg(feature = "metrics")]
pub(crate) struct Exported {
    /// By source (value, function, last good), then cause (failure,
    /// rejection).
    answered: [[::metrics::Counter; 2]; 3],
    no_last_good: ::metrics::Counter,
    last_good_entries: ::metrics::Gauge,
}

#[cfg(feature = "metrics")]
impl Exported {
    /// Handles for the fallback `name`, which keeps no response yet.
    pub(crate) fn new(name: &std::sync::Arc<str>) -> Self {
        use super::event::{FailureCause, FallbackSource};
        let name = crate::metrics::name_label(name);
        let answered = |source: FallbackSource| {
            [FailureCause::Failure, FailureCause::Rejection].map(|cause| {
                ::metrics::counter!("palisade_fallback_answered_total", "name" => name.clone(), "source" => source.as_str(), "cause" => cause.as_str())
            })
        };
        let exported = Self {
            answered: [
                answered(FallbackSource::Value),
                answered(FallbackSource::Function),
                answered(FallbackSource::LastGood),
            ],
            no_last_good: ::metrics::counter!("palisade_fallback_no_last_good_total", "name" => name.clone()),
            last_good_entries: ::metrics::gauge!("palisade_fallback_last_good_entries", "name" => name),
        };
        exported.last_good_entries.set(0.0);
        exported
    }

    /// The fallback answered a call from `source`, because of `cause`.
    #[inline]
    pub(crate) fn on_answered(
        &self,
        source: super::event::FallbackSource,
        cause: super::event::FailureCause,
    ) {
        use super::event::{FailureCause, FallbackSource};
        let by_source = match source {
            FallbackSource::Value => &self.answered[0],
            FallbackSource::Function => &self.answered[1],
            FallbackSource::LastGood => &self.answered[2],
        };
        match cause {
            FailureCause::Failure => &by_source[0],
            FailureCause::Rejection => &by_source[1],
        }
        .increment(1);
    }

    /// A call's key had no last good response.
    #[inline]
    pub(crate) fn on_no_last_good(&self) {
        self.no_last_good.increment(1);
    }

    /// Keys with a last good response: `added` more (or, negative, fewer).
    #[inline]
    pub(crate) fn on_last_good_entries(&self, added: f64) {
        self.last_good_entries.increment(added);
    }
}

/// Without the `metrics` feature: nothing, at no cost.
#[cfg(not(feature = "metrics"))]
pub(crate) struct Exported;

#[cfg(not(feature = "metrics"))]
impl Exported {
    #[inline(always)]
    pub(crate) fn new(_name: &std::sync::Arc<str>) -> Self {
        Self
    }
    #[inline(always)]
    pub(crate) fn on_answered(
        &self,
        _source: super::event::FallbackSource,
        _cause: super::event::FailureCause,
    ) {
    }
    #[inline(always)]
    pub(crate) fn on_no_last_good(&self) {}
    #[inline(always)]
    pub(crate) fn on_last_good_entries(&self, _added: f64) {}
}
