//! Deciding on an event and sending what was decided, inside the saga's projection batch.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use super::instance::SagaInstance;
use super::{Actions, DispatchError, Saga};
use crate::bus::CommandContext;
use crate::event::{DomainEvent, Envelope};
use crate::idempotency::IdempotencyClaim;
use crate::projection::batch::panic_message;
use crate::projection::{BoxFuture, ProjectionError, ReactionFailed, Reactor};
use crate::stream::Position;
use crate::view::ViewLocator;

/// Locates events to a saga's instances through [`Saga::locate`].
pub struct SagaLocator<G>(pub(crate) Arc<G>);

impl<E: DomainEvent, G: Saga<E>> ViewLocator<E> for SagaLocator<G> {
    fn locate(&self, event: &Envelope<E>, ids: &mut Vec<String>) {
        self.0.locate(event, ids);
    }
}

/// Runs [`Saga::react`] on each event applied to an instance and sends its commands, for
/// events after `acts_from` (see [`super::acts_from`]).
pub(crate) struct SagaReactor<G> {
    pub(crate) saga: Arc<G>,
    pub(crate) acts_from: Position,
}

impl<E: DomainEvent, G: Saga<E>> Reactor<E, SagaInstance<G, E>> for SagaReactor<G> {
    fn react<'a>(
        &'a self,
        id: &'a str,
        instance: &'a mut SagaInstance<G, E>,
        event: &'a Envelope<E>,
        acting: bool,
    ) -> BoxFuture<'a, Result<(), ReactionFailed>> {
        Box::pin(async move {
            let saga = self.saga.as_ref();
            let mut actions = Actions::default();
            let decided = catch_unwind(AssertUnwindSafe(|| {
                saga.react(&mut instance.state, event, &mut actions)
            }));
            match decided {
                Ok(Ok(())) => {}
                Ok(Err(refused)) => return Err(ReactionFailed::Instance(refused.to_string())),
                Err(panic) => {
                    let message = panic_message(&*panic);
                    return Err(ReactionFailed::Instance(format!("the saga panicked: {message}")));
                }
            }
            instance.record(event, &actions);
            if !acting || event.position <= self.acts_from {
                return Ok(());
            }
            for (index, command) in actions.sent.into_iter().enumerate() {
                let key = command_key(G::NAME, id, event.position, &index.to_string());
                let mut context = context(G::NAME, &event.metadata.correlation_id, key);
                // The request that caused the event is the user of what the saga does for it.
                if let Some(user) = &event.metadata.user {
                    context.user = Some(user.clone());
                }
                send(saga, id, command, &context, event.position).await?;
            }
            Ok(())
        })
    }
}

/// The idempotency key of a command a saga sends: its saga, instance and cause. Spaces
/// keep it apart from every key a client can send (those are visible ASCII only).
pub(crate) fn command_key(saga: &str, id: &str, cause: Position, which: &str) -> String {
    format!("saga {saga} {id} {cause} {which}")
}

/// The context of a command `saga` sends: the correlation id of what caused it, so that an
/// audit of a request finds what its sagas did, and the saga as the user (the reactor puts
/// the causing event's user instead, when it has one).
pub(crate) fn context(saga: &str, correlation_id: &str, key: String) -> CommandContext {
    let mut context = CommandContext::new(correlation_id);
    context.user = Some(format!("saga:{saga}"));
    context.command_id = key.clone();
    context.idempotency = Some(IdempotencyClaim { fingerprint: key.clone(), key, recorded: None });
    context
}

async fn send<E: DomainEvent, G: Saga<E>>(
    saga: &G,
    id: &str,
    command: G::Command,
    context: &CommandContext,
    cause: Position,
) -> Result<(), ReactionFailed> {
    let sent =
        tokio::time::timeout(super::deadlines::SEND_TIMEOUT, saga.dispatch(id, command, context));
    let sent = sent.await.unwrap_or_else(|_| {
        Err(DispatchError::Unavailable(format!(
            "no answer within {:?}",
            super::deadlines::SEND_TIMEOUT
        )))
    });
    match sent {
        Ok(()) => Ok(()),
        Err(DispatchError::Refused(why)) => Err(ReactionFailed::Instance(why)),
        Err(DispatchError::Unavailable(error)) => {
            Err(ReactionFailed::Batch(ProjectionError::Dispatch { position: cause, error }))
        }
    }
}
