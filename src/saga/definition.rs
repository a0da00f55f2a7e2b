//! What a saga is: a named, versioned list of stages of steps.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::codec::{Codec, CodecError, JsonCodec};
use super::context::StepContext;
use super::log::BoxFuture;
use crate::backoff::Backoff;
use crate::error::{BoxError, ConfigError};

const COMPONENT: &str = "saga definition";

/// The largest number of attempts a step's action or compensation may be
/// given.
pub const MAX_STEP_ATTEMPTS: u32 = 1_000;

/// Why a step's action failed.
///
/// The difference matters for compensation: an action that failed with
/// [`NoEffect`](StepError::NoEffect) is known to have changed nothing and
/// is not compensated; one that failed with [`Unknown`](StepError::Unknown)
/// may have taken effect (a timeout, a lost connection) and is compensated
/// if the saga compensates, so compensations must tolerate undoing
/// something that never happened. A step timeout is `Unknown`.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The action is known to have changed nothing.
    #[error("{0}")]
    NoEffect(#[source] BoxError),
    /// The action may have taken effect.
    #[error("{0}")]
    Unknown(#[source] BoxError),
}

impl StepError {
    /// A failure known to have changed nothing.
    pub fn no_effect(error: impl Into<BoxError>) -> Self {
        StepError::NoEffect(error.into())
    }

    /// A failure that may have taken effect.
    pub fn unknown(error: impl Into<BoxError>) -> Self {
        StepError::Unknown(error.into())
    }

    /// The underlying error.
    pub fn error(&self) -> &BoxError {
        match self {
            StepError::NoEffect(e) | StepError::Unknown(e) => e,
        }
    }
}

/// A value that could not be decoded (or a missing output) means the
/// action did not run: [`StepError::NoEffect`].
impl From<CodecError> for StepError {
    fn from(error: CodecError) -> Self {
        StepError::NoEffect(Box::new(error))
    }
}

/// A step's action or compensation attempt took longer than its timeout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("step `{step}` timed out after {timeout:?}")]
pub struct StepTimedOut {
    /// The step.
    pub step: String,
    /// The timeout.
    pub timeout: Duration,
}

pub(crate) type ActionFn<Ctx, C> = Arc<
    dyn Fn(Arc<Ctx>, StepContext<C>) -> BoxFuture<'static, Result<Vec<u8>, StepError>>
        + Send
        + Sync,
>;
pub(crate) type UndoFn<Ctx, C> =
    Arc<dyn Fn(Arc<Ctx>, StepContext<C>) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// How often an action or a compensation is tried, and how long to wait
/// between tries.
#[derive(Debug, Clone)]
pub(crate) struct Attempts {
    pub(crate) backoff: Backoff,
    pub(crate) max_attempts: u32,
    pub(crate) timeout: Option<Duration>,
}

/// One step of a saga: an action, its compensation, and how each is tried.
///
/// Defaults: the action is tried once with no timeout; the compensation is
/// tried up to 5 times with the default [`Backoff`] (exponential from
/// 100 ms, full jitter, at most 10 s), with no timeout.
pub struct Step<Ctx, C = JsonCodec> {
    pub(crate) name: Arc<str>,
    pub(crate) action: ActionFn<Ctx, C>,
    pub(crate) compensation: Option<UndoFn<Ctx, C>>,
    pub(crate) action_attempts: Attempts,
    pub(crate) undo_attempts: Attempts,
}

impl<Ctx, C> Clone for Step<Ctx, C> {
    fn clone(&self) -> Self {
        Self {
            name: Arc::clone(&self.name),
            action: Arc::clone(&self.action),
            compensation: self.compensation.clone(),
            action_attempts: self.action_attempts.clone(),
            undo_attempts: self.undo_attempts.clone(),
        }
    }
}

impl<Ctx, C> fmt::Debug for Step<Ctx, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("compensated", &self.compensation.is_some())
            .field("action_attempts", &self.action_attempts)
            .field("undo_attempts", &self.undo_attempts)
            .finish_non_exhaustive()
    }
}

fn erase_action<Ctx, C, F, Fut, O>(action: F) -> ActionFn<Ctx, C>
where
    Ctx: Send + Sync + 'static,
    C: Codec,
    F: Fn(Arc<Ctx>, StepContext<C>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, StepError>> + Send + 'static,
    O: Serialize + Send + 'static,
{
    Arc::new(move |ctx, step: StepContext<C>| {
        let codec = step.codec_handle();
        let fut = action(ctx, step);
        Box::pin(async move {
            let output = fut.await?;
            codec.encode(&output).map_err(StepError::from)
        })
    })
}

impl<Ctx, C> Step<Ctx, C>
where
    Ctx: Send + Sync + 'static,
    C: Codec,
{
    /// A step with an action and its compensation.
    ///
    /// Both are async functions of the saga's shared context (`Arc<Ctx>`,
    /// your service clients) and a [`StepContext`] (the saga's input,
    /// earlier outputs, the idempotency key). The action's output is
    /// encoded into the log and readable by later steps.
    pub fn new<F, Fut, O, G, GFut, E>(name: impl Into<Arc<str>>, action: F, compensation: G) -> Self
    where
        F: Fn(Arc<Ctx>, StepContext<C>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, StepError>> + Send + 'static,
        O: Serialize + Send + 'static,
        G: Fn(Arc<Ctx>, StepContext<C>) -> GFut + Send + Sync + 'static,
        GFut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let undo: UndoFn<Ctx, C> = Arc::new(move |ctx, step| {
            let fut = compensation(ctx, step);
            Box::pin(async move { fut.await.map_err(Into::into) })
        });
        Self {
            compensation: Some(undo),
            ..Self::without_compensation(name, action)
        }
    }

    /// A step with nothing to undo (a read, a notification, the last step).
    pub fn without_compensation<F, Fut, O>(name: impl Into<Arc<str>>, action: F) -> Self
    where
        F: Fn(Arc<Ctx>, StepContext<C>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, StepError>> + Send + 'static,
        O: Serialize + Send + 'static,
    {
        Self {
            name: name.into(),
            action: erase_action(action),
            compensation: None,
            action_attempts: Attempts {
                backoff: Backoff::default(),
                max_attempts: 1,
                timeout: None,
            },
            undo_attempts: Attempts {
                backoff: Backoff::default(),
                max_attempts: 5,
                timeout: None,
            },
        }
    }
}

impl<Ctx, C> Step<Ctx, C> {
    /// Tries the action up to `max_attempts` times (1 to
    /// [`MAX_STEP_ATTEMPTS`]), waiting `backoff` between tries. After a
    /// pivot step the action is retried until it succeeds, whatever the
    /// limit.
    pub fn retry(mut self, backoff: Backoff, max_attempts: u32) -> Self {
        self.action_attempts.backoff = backoff;
        self.action_attempts.max_attempts = max_attempts;
        self
    }

    /// Fails an action attempt that takes longer than `timeout` with
    /// [`StepError::Unknown`] ([`StepTimedOut`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.action_attempts.timeout = Some(timeout);
        self
    }

    /// Tries the compensation up to `max_attempts` times (1 to
    /// [`MAX_STEP_ATTEMPTS`]), waiting `backoff` between tries; then the
    /// saga is stuck.
    pub fn compensation_retry(mut self, backoff: Backoff, max_attempts: u32) -> Self {
        self.undo_attempts.backoff = backoff;
        self.undo_attempts.max_attempts = max_attempts;
        self
    }

    /// Fails a compensation attempt that takes longer than `timeout`.
    pub fn compensation_timeout(mut self, timeout: Duration) -> Self {
        self.undo_attempts.timeout = Some(timeout);
        self
    }

    /// The step's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new(
                COMPONENT,
                "step",
                "names must not be empty",
            ));
        }
        for (attempts, field, timeout_field) in [
            (&self.action_attempts, "max_attempts", "timeout"),
            (
                &self.undo_attempts,
                "compensation_max_attempts",
                "compensation_timeout",
            ),
        ] {
            if !(1..=MAX_STEP_ATTEMPTS).contains(&attempts.max_attempts) {
                return Err(ConfigError::new(
                    COMPONENT,
                    field,
                    format!(
                        "of step `{}` must be 1 to {MAX_STEP_ATTEMPTS}, got {}",
                        self.name, attempts.max_attempts
                    ),
                ));
            }
            if attempts.timeout == Some(Duration::ZERO) {
                return Err(ConfigError::new(
                    COMPONENT,
                    timeout_field,
                    format!("of step `{}` must be greater than zero", self.name),
                ));
            }
        }
        Ok(())
    }
}

/// Steps run together: one step, or a parallel group.
pub(crate) struct Stage<Ctx, C> {
    pub(crate) steps: Vec<Step<Ctx, C>>,
    pub(crate) pivot: bool,
}

impl<Ctx, C> fmt::Debug for Stage<Ctx, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stage")
            .field("steps", &self.steps)
            .field("pivot", &self.pivot)
            .finish()
    }
}

pub(crate) struct DefinitionInner<Ctx, C> {
    pub(crate) name: Arc<str>,
    pub(crate) version: u32,
    pub(crate) stages: Vec<Stage<Ctx, C>>,
}

/// A named, versioned saga: stages of steps run in order.
///
/// Built with [`SagaDefinition::builder`]; cheap to clone.
///
/// ```
/// use std::sync::Arc;
/// use palisade::saga::{SagaDefinition, Step, StepContext, StepError};
///
/// struct Services; // your service clients
///
/// let definition = SagaDefinition::<Services>::builder("create-order", 1)
///     .step(Step::new(
///         "payment",
///         |_svc: Arc<Services>, cx: StepContext| async move {
///             let amount: u64 = cx.input()?;
///             Ok::<_, StepError>(format!("charge for {amount}"))
///         },
///         |_svc, _cx| async { Ok::<_, std::io::Error>(()) },
///     ))
///     .build()
///     .unwrap();
/// assert_eq!(definition.name(), "create-order");
/// assert_eq!(definition.steps().collect::<Vec<_>>(), ["payment"]);
/// ```
pub struct SagaDefinition<Ctx, C = JsonCodec> {
    pub(crate) inner: Arc<DefinitionInner<Ctx, C>>,
}

impl<Ctx, C> Clone for SagaDefinition<Ctx, C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<Ctx, C> fmt::Debug for SagaDefinition<Ctx, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaDefinition")
            .field("name", &self.inner.name)
            .field("version", &self.inner.version)
            .field("stages", &self.inner.stages)
            .finish()
    }
}

impl<Ctx> SagaDefinition<Ctx, JsonCodec> {
    /// Starts a definition whose values are encoded as JSON.
    pub fn builder(
        name: impl Into<Arc<str>>,
        version: u32,
    ) -> SagaDefinitionBuilder<Ctx, JsonCodec> {
        Self::builder_with_codec(name, version)
    }
}

impl<Ctx, C> SagaDefinition<Ctx, C> {
    /// Starts a definition for an executor using codec `C`.
    pub fn builder_with_codec(
        name: impl Into<Arc<str>>,
        version: u32,
    ) -> SagaDefinitionBuilder<Ctx, C> {
        SagaDefinitionBuilder {
            name: name.into(),
            version,
            stages: Vec::new(),
        }
    }

    /// The saga's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The saga's version.
    pub fn version(&self) -> u32 {
        self.inner.version
    }

    /// Every step's name, in order.
    pub fn steps(&self) -> impl Iterator<Item = &str> {
        self.inner
            .stages
            .iter()
            .flat_map(|s| s.steps.iter().map(|s| &*s.name))
    }

    pub(crate) fn step(&self, name: &str) -> Option<&Step<Ctx, C>> {
        self.inner
            .stages
            .iter()
            .flat_map(|s| s.steps.iter())
            .find(|s| &*s.name == name)
    }
}

/// Builds a [`SagaDefinition`].
pub struct SagaDefinitionBuilder<Ctx, C = JsonCodec> {
    name: Arc<str>,
    version: u32,
    stages: Vec<Stage<Ctx, C>>,
}

impl<Ctx, C> fmt::Debug for SagaDefinitionBuilder<Ctx, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaDefinitionBuilder")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("stages", &self.stages)
            .finish()
    }
}

impl<Ctx, C> SagaDefinitionBuilder<Ctx, C> {
    /// Adds a stage of one step.
    pub fn step(mut self, step: Step<Ctx, C>) -> Self {
        self.stages.push(Stage {
            steps: vec![step],
            pivot: false,
        });
        self
    }

    /// Adds a stage whose steps run concurrently. If any of them fails
    /// (after its retries), the others finish the attempt they are in but
    /// are not tried again, and the saga compensates, including the
    /// stage's completed members and those whose outcome is unknown.
    pub fn parallel(mut self, steps: impl IntoIterator<Item = Step<Ctx, C>>) -> Self {
        self.stages.push(Stage {
            steps: steps.into_iter().collect(),
            pivot: false,
        });
        self
    }

    /// Adds the pivot step: once it completes the saga only goes forward,
    /// retrying every later step until it succeeds. At most one pivot.
    pub fn pivot(mut self, step: Step<Ctx, C>) -> Self {
        self.stages.push(Stage {
            steps: vec![step],
            pivot: true,
        });
        self
    }

    /// Validates the definition: at least one step, unique non-empty step
    /// names, no empty parallel stage, at most one pivot, and valid retry
    /// settings on every step.
    pub fn build(self) -> Result<SagaDefinition<Ctx, C>, ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new(COMPONENT, "name", "must not be empty"));
        }
        if self.stages.is_empty() {
            return Err(ConfigError::new(
                COMPONENT,
                "steps",
                format!("saga `{}` must have at least one step", self.name),
            ));
        }
        if self.stages.iter().any(|s| s.steps.is_empty()) {
            return Err(ConfigError::new(
                COMPONENT,
                "parallel",
                format!("saga `{}` has a parallel stage without steps", self.name),
            ));
        }
        if self.stages.iter().filter(|s| s.pivot).count() > 1 {
            return Err(ConfigError::new(
                COMPONENT,
                "pivot",
                format!("saga `{}` has more than one pivot step", self.name),
            ));
        }
        let mut seen = HashSet::new();
        for step in self.stages.iter().flat_map(|s| s.steps.iter()) {
            step.validate()?;
            if !seen.insert(Arc::clone(&step.name)) {
                return Err(ConfigError::new(
                    COMPONENT,
                    "step",
                    format!("name `{}` is used twice in saga `{}`", step.name, self.name),
                ));
            }
        }
        Ok(SagaDefinition {
            inner: Arc::new(DefinitionInner {
                name: self.name,
                version: self.version,
                stages: self.stages,
            }),
        })
    }
}
