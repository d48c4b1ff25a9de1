//! The answers the edge writes itself: its errors, in the envelope of the call's surface
//! (`Retry-After` where the error has one, `connection: close` when the connection ends
//! after it), and the JSON bodies it answers whole.

use bytes::Bytes;
use pingora::Result;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::error::ApiError;
use crate::proxy::{EdgeProxy, RequestCtx};

impl EdgeProxy {
    /// Writes `err` as the answer, in the envelope of the call's surface, unless an answer
    /// was already started.
    pub(crate) async fn answer_error(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        err: &ApiError,
    ) -> u16 {
        self.answer_error_then(session, ctx, err, false).await
    }

    /// [`answer_error`](Self::answer_error), saying `connection: close` when the edge
    /// closes the connection after it (`close`), so that a client never sends its next
    /// request on a connection that is going away.
    pub(crate) async fn answer_error_then(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        err: &ApiError,
        close: bool,
    ) -> u16 {
        if session.response_written().is_some() {
            return 0;
        }
        // A refused request's unread body is drained by pingora before the connection is
        // reused, so the client always reads the answer.
        let body = ctx.surface.error_body(err);
        match respond(session, err.status, body, err.retry_after, close).await {
            Ok(()) => err.status,
            Err(e) => {
                tracing::debug!(error = %e, "could not send an error answer");
                0
            }
        }
    }
}

/// Writes a whole JSON answer.
pub(crate) async fn respond(
    session: &mut Session,
    status: u16,
    body: Vec<u8>,
    retry_after: Option<u64>,
    close: bool,
) -> Result<()> {
    let mut header = ResponseHeader::build(status, Some(5))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header("content-length", body.len().to_string())?;
    if let Some(secs) = retry_after {
        header.insert_header("retry-after", secs.to_string())?;
    }
    if close {
        header.insert_header("connection", "close")?;
        session.set_keepalive(None);
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}
