//! The gateway's filters in order, indexed by phase: the built-in ones first, then the added
//! ones. A phase is a list of the filters that declared it, so a request pays only for the
//! phases somebody wants (the caller asks [`Chain::runs`] before building the filters' view
//! of the request).

use super::{EdgeAnswer, HttpAction, HttpFilter, Phases, Request};
use crate::http::kea::Command;
use pingora_http::{RequestHeader, ResponseHeader};
use std::time::Duration;

/// The phases, in the order of [`Chain::by_phase`].
const PHASES: [Phases; 6] = [
    Phases::REQUEST,
    Phases::KEA_COMMAND,
    Phases::KEA_ANSWER,
    Phases::UPSTREAM_REQUEST,
    Phases::RESPONSE,
    Phases::LOGGING,
];

/// HTTP filters in the order they run, each phase with the filters that declared it.
#[derive(Default)]
pub(crate) struct Chain {
    filters: Box<[Box<dyn HttpFilter>]>,
    /// For each of [`PHASES`], the indices into `filters` of those that declared it.
    by_phase: [Box<[usize]>; 6],
}

impl Chain {
    /// The chain of `filters`, in that order.
    pub(crate) fn new(filters: Vec<Box<dyn HttpFilter>>) -> Chain {
        let by_phase = PHASES.map(|p| {
            (0..filters.len())
                .filter(|&i| filters[i].phases().contains(p))
                .collect()
        });
        Chain {
            filters: filters.into(),
            by_phase,
        }
    }

    /// The indices of the filters that declared `phase` (one phase).
    fn indices(&self, phase: Phases) -> &[usize] {
        match PHASES.iter().position(|&p| p == phase) {
            Some(at) => &self.by_phase[at],
            None => &[],
        }
    }

    fn in_phase(&self, phase: Phases) -> impl Iterator<Item = &dyn HttpFilter> {
        self.indices(phase).iter().map(|&i| &*self.filters[i])
    }

    /// Whether any filter declared `phase` (one phase).
    pub(crate) fn runs(&self, phase: Phases) -> bool {
        self.in_phase(phase).next().is_some()
    }

    /// The `request` phase: the first edge answer, and the name of the filter that gave it.
    pub(crate) async fn request(&self, req: &Request<'_>) -> Option<(&str, EdgeAnswer)> {
        for f in self.in_phase(Phases::REQUEST) {
            if let HttpAction::Answer(a) = f.request(req).await {
                return Some((f.name(), a));
            }
        }
        None
    }

    /// The `kea_command` phase: the first edge answer, and who gave it.
    pub(crate) async fn kea_command(
        &self,
        req: &Request<'_>,
        cmd: &Command,
        body: &[u8],
    ) -> Option<(&str, EdgeAnswer)> {
        for f in self.in_phase(Phases::KEA_COMMAND) {
            if let HttpAction::Answer(a) = f.kea_command(req, cmd, body).await {
                return Some((f.name(), a));
            }
        }
        None
    }

    /// The filters that want to edit Kea's answer to `cmd` (indices for
    /// [`Chain::kea_answer`]; empty, and not allocated, when none does).
    pub(crate) fn kea_editors(&self, req: &Request<'_>, cmd: &Command) -> Vec<usize> {
        self.indices(Phases::KEA_ANSWER)
            .iter()
            .copied()
            .filter(|&i| self.filters[i].wants_kea_answer(req, cmd))
            .collect()
    }

    /// Lets the `editors` edit Kea's answer to `cmd`, in order.
    pub(crate) fn kea_answer(
        &self,
        editors: &[usize],
        req: &Request<'_>,
        cmd: &Command,
        answer: &mut serde_json::Value,
    ) {
        for &i in editors {
            self.filters[i].kea_answer(req, cmd, answer);
        }
    }

    /// The `upstream_request` phase; the first refusal, as `filter <name>: <why>`.
    pub(crate) fn upstream_request(
        &self,
        req: &Request<'_>,
        upstream: &mut RequestHeader,
    ) -> Result<(), String> {
        for f in self.in_phase(Phases::UPSTREAM_REQUEST) {
            f.upstream_request(req, upstream)
                .map_err(|e| format!("filter {}: {e}", f.name()))?;
        }
        Ok(())
    }

    /// The `response` phase.
    pub(crate) fn response(&self, req: &Request<'_>, resp: &mut ResponseHeader) {
        for f in self.in_phase(Phases::RESPONSE) {
            f.response(req, resp);
        }
    }

    /// The `logging` phase.
    pub(crate) fn logging(&self, req: &Request<'_>, status: u16, elapsed: Duration) {
        for f in self.in_phase(Phases::LOGGING) {
            f.logging(req, status, elapsed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::Identity;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts every call it gets, in any phase, and answers requests when `answers`.
    struct Counting {
        phases: Phases,
        calls: Arc<AtomicUsize>,
        answers: bool,
    }

    #[async_trait::async_trait]
    impl HttpFilter for Counting {
        fn name(&self) -> &str {
            "counting"
        }
        fn phases(&self) -> Phases {
            self.phases
        }
        async fn request(&self, _: &Request<'_>) -> HttpAction {
            self.calls.fetch_add(1, Ordering::Relaxed);
            match self.answers {
                true => HttpAction::Answer(EdgeAnswer::text(418, "tea")),
                false => HttpAction::Continue,
            }
        }
        fn response(&self, _: &Request<'_>, _: &mut ResponseHeader) {
            self.calls.fetch_add(1, Ordering::Relaxed);
        }
        fn logging(&self, _: &Request<'_>, _: u16, _: Duration) {
            self.calls.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counting(phases: Phases, answers: bool) -> (Box<dyn HttpFilter>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let f = Counting {
            phases,
            calls: calls.clone(),
            answers,
        };
        (Box::new(f), calls)
    }

    fn request(header: &RequestHeader) -> Request<'_> {
        Request {
            listener: "l",
            identity: Identity::of(None),
            client: None,
            route: "r",
            header,
        }
    }

    #[tokio::test]
    async fn a_filter_is_called_in_the_phases_it_declared_only() {
        let (only_logging, logged) = counting(Phases::LOGGING, true);
        let (request_and_response, both) = counting(Phases::REQUEST | Phases::RESPONSE, false);
        let chain = Chain::new(vec![only_logging, request_and_response]);
        assert!(chain.runs(Phases::REQUEST) && chain.runs(Phases::LOGGING));
        assert!(!chain.runs(Phases::KEA_COMMAND) && !chain.runs(Phases::UPSTREAM_REQUEST));
        let header = RequestHeader::build("GET", b"/", None).unwrap();
        let req = request(&header);
        // The first filter would answer, but it did not declare `request`.
        assert!(chain.request(&req).await.is_none());
        chain.response(&req, &mut ResponseHeader::build(200, None).unwrap());
        assert_eq!(
            (logged.load(Ordering::Relaxed), both.load(Ordering::Relaxed)),
            (0, 2)
        );
        chain.logging(&req, 200, Duration::ZERO);
        assert_eq!(logged.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn the_first_answer_wins_and_names_its_filter() {
        let (first, first_calls) = counting(Phases::REQUEST, true);
        let (second, second_calls) = counting(Phases::ALL, true);
        let chain = Chain::new(vec![first, second]);
        let header = RequestHeader::build("GET", b"/", None).unwrap();
        let req = request(&header);
        let (by, answer) = chain.request(&req).await.expect("an answer");
        assert_eq!((by, answer.status), ("counting", 418));
        assert_eq!(first_calls.load(Ordering::Relaxed), 1);
        assert_eq!(second_calls.load(Ordering::Relaxed), 0);
    }
}
