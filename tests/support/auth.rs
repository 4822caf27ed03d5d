//! A bearer-token check for tower-http's `ValidateRequestHeaderLayer`, as a
//! service owner writes one now that tower-http's own `bearer` is
//! deprecated.

use std::marker::PhantomData;

use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, StatusCode};
use tower_http::validate_request::ValidateRequest;

/// Lets through only requests with `Authorization: Bearer <token>`; answers
/// others with `401` and an empty `R` (any body that is `Default`, such as
/// the feed's own).
pub(crate) struct Bearer<R> {
    expected: HeaderValue,
    body: PhantomData<fn() -> R>,
}

impl<R> Bearer<R> {
    pub(crate) fn new(token: &str) -> Self {
        Bearer {
            expected: HeaderValue::try_from(format!("Bearer {token}")).expect("a printable token"),
            body: PhantomData,
        }
    }
}

impl<R> Clone for Bearer<R> {
    fn clone(&self) -> Self {
        Bearer {
            expected: self.expected.clone(),
            body: PhantomData,
        }
    }
}

impl<B, R: Default> ValidateRequest<B> for Bearer<R> {
    type ResponseBody = R;

    fn validate(&mut self, request: &mut Request<B>) -> Result<(), Response<R>> {
        if request.headers().get(AUTHORIZATION) == Some(&self.expected) {
            return Ok(());
        }
        let mut response = Response::new(R::default());
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Err(response)
    }
}
