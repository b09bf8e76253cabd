//! Command handlers for incoming requests.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::envelope::MessageId;

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// Source twin (authenticated: the envelope signature verified against its ledger key).
    pub source: u32,
    /// Source session (the reply goes back to it).
    pub session: Option<String>,
    /// The request's envelope id.
    pub id: MessageId,
    /// The command being handled.
    pub command: String,
}

/// An error reply: travels back to the caller as `RmbError::Remote { code, message }`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct HandlerError {
    /// Application code (HTTP-like by convention: 400 bad input, 404 unknown, 500 internal).
    pub code: u32,
    /// Message for the caller.
    pub message: String,
}

impl HandlerError {
    /// An error with `code` and `message`.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        HandlerError {
            code,
            message: message.into(),
        }
    }

    /// 400: the request was invalid.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    /// 404: nothing by that name.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }

    /// 500: the handler failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, message)
    }
}

pub(crate) type HandlerFn = Arc<
    dyn Fn(RequestContext, Value) -> BoxFuture<'static, Result<Value, HandlerError>> + Send + Sync,
>;

/// Maps command names to handlers.
#[derive(Default, Clone)]
pub struct Router {
    handlers: HashMap<String, HandlerFn>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("commands", &self.handlers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Router {
    /// A router with no handlers (every request gets 404).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `f` for `command` (replacing any earlier handler).
    pub fn handle<F, Fut>(&mut self, command: &str, f: F)
    where
        F: Fn(RequestContext, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, HandlerError>> + Send + 'static,
    {
        let f: HandlerFn = Arc::new(move |ctx, v| Box::pin(f(ctx, v)));
        self.handlers.insert(command.to_owned(), f);
    }

    /// The registered command names.
    pub fn commands(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(String::as_str)
    }

    pub(crate) fn get(&self, command: &str) -> Option<HandlerFn> {
        self.handlers.get(command).cloned()
    }
}
