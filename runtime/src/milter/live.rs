//! The session's milter conversations, run alongside the SMTP dialogue as Postfix's
//! `smtpd_milters` are: each milter is connected and told connect and HELO at the session's
//! first MAIL FROM (not at connect: most sessions that never send mail are zombies, and each
//! open conversation costs a socket and a milter thread), told MAIL before our reply to MAIL,
//! each RCPT the policy accepted before our reply to that RCPT, and the message once spooled.
//! Between transactions it gets `SMFIC_ABORT` and is reused; at the end `SMFIC_QUIT`.
//!
//! What a milter's answer at a stage means is [`super::judge`]'s to say (the same checks of its
//! own reply at every stage); this module keeps the state: which milters are open, which
//! accepted (nothing more to ask them about this message, or at connect and HELO about this
//! session), which failed open (skipped for the rest of the session, as Postfix does), and the
//! time each spent on the current transaction against its total timeout.

use super::client::{self, Answer, Conversation, Envelope, MilterError, Step, Stream, Verdict};
use mtac_ruleset::model::{Filter, FilterKind};
use std::time::Duration;

/// One milter's conversation and what it said so far.
enum State {
    /// Not connected yet (or dropped after a failure with `fail="closed"`: asked again at the
    /// next stage).
    Unopened,
    Open(Box<Conversation<Box<dyn Stream>>>),
    /// Accepted the session at connect or HELO, or failed with `fail="open"`: not asked again.
    Done,
    /// Refused the session at connect or HELO: every MAIL gets this verdict.
    Refusing(Verdict),
}

struct Slot {
    /// The filter's place among the farm's filters.
    index: usize,
    state: State,
    /// Told MAIL for the transaction in progress.
    in_transaction: bool,
    /// Accepted the transaction's message at MAIL or RCPT: not asked again until the next.
    accepted: bool,
    /// A verdict about the whole message given before DATA (a discard at RCPT).
    pending: Option<Verdict>,
    /// Time spent on this transaction, against the filter's total timeout.
    spent: Duration,
}

/// What a stage's answer means for the command being answered.
#[derive(Debug)]
pub enum StageAnswer {
    /// On to the next milter; the command may be accepted.
    Pass,
    /// The milter refused the command (its verdict; `super::judge` makes the reply).
    Verdict(usize, Verdict),
    /// The milter failed (its `fail=` decides).
    Failed(usize, MilterError),
}

/// The session's milters, in policy order.
pub struct LiveMilters {
    slots: Vec<Slot>,
    /// Milters that failed with `fail="open"` at the last stage (given up for the session),
    /// for the caller's logs and metrics.
    failed_open: Vec<(usize, MilterError)>,
}

impl LiveMilters {
    /// The farm's milters, none connected yet. Hooks are asked at the end of the message only.
    pub fn new(filters: &[Filter]) -> LiveMilters {
        let slots = filters
            .iter()
            .enumerate()
            .filter(|(_, f)| f.kind == FilterKind::Milter)
            .map(|(index, _)| Slot {
                index,
                state: State::Unopened,
                in_transaction: false,
                accepted: false,
                pending: None,
                spent: Duration::ZERO,
            })
            .collect();
        LiveMilters { slots, failed_open: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The milters that failed open at the last stages asked, since the last call.
    pub fn take_failed_open(&mut self) -> Vec<(usize, MilterError)> {
        std::mem::take(&mut self.failed_open)
    }

    /// MAIL FROM the policy accepted: each milter (connected and told connect and HELO first,
    /// if this is its first transaction) is told the sender. The first refusal answers MAIL.
    pub async fn mail(&mut self, filters: &[Filter], envelope: &Envelope<'_>) -> StageAnswer {
        for slot in &mut self.slots {
            let Some(filter) = filters.get(slot.index) else { continue };
            (slot.in_transaction, slot.accepted, slot.pending, slot.spent) = (false, false, None, Duration::ZERO);
            if let State::Refusing(verdict) = &slot.state {
                return StageAnswer::Verdict(slot.index, verdict.clone());
            }
            let result = slot.ask(filter, envelope, Ask::Mail).await;
            slot.in_transaction = result.is_ok();
            if let Some(answer) = slot.outcome(result, filter.fail_open, &mut self.failed_open) {
                return answer;
            }
        }
        StageAnswer::Pass
    }

    /// RCPT TO the policy accepted (the recipients accepted before it are in `envelope`).
    pub async fn rcpt(&mut self, filters: &[Filter], envelope: &Envelope<'_>, rcpt: &str) -> StageAnswer {
        for slot in &mut self.slots {
            let Some(filter) = filters.get(slot.index) else { continue };
            if slot.accepted || slot.pending.is_some() {
                continue;
            }
            let result = slot.ask(filter, envelope, Ask::Rcpt(rcpt)).await;
            if let Some(answer) = slot.outcome(result, filter.fail_open, &mut self.failed_open) {
                return answer;
            }
        }
        StageAnswer::Pass
    }

    /// The spooled message, for the milter that is the farm's `index`th filter: its answer at
    /// the end of the message (or the verdict it gave before). `None`: nothing to ask it (it
    /// accepted, or failed open earlier).
    pub async fn message(
        &mut self,
        index: usize,
        filter: &Filter,
        envelope: &Envelope<'_>,
        spool: &crate::spool::SpoolReader,
        body: &mut super::edits::ReplacementBody<'_>,
    ) -> Option<Result<Answer, MilterError>> {
        let slot = self.slots.iter_mut().find(|s| s.index == index)?;
        if let Some(verdict) = slot.pending.clone() {
            return Some(Ok(Answer { verdict, edits: Vec::new() }));
        }
        if slot.accepted || matches!(slot.state, State::Done) {
            return None;
        }
        Some(slot.ask_message(filter, envelope, spool, body).await)
    }

    /// The milter failed with `fail="open"`: skip it for the rest of the session.
    pub fn give_up(&mut self, index: usize) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.index == index) {
            slot.state = State::Done;
        }
    }

    /// The transaction is over (message answered, RSET, a new EHLO, a refused MAIL): each milter
    /// told MAIL is told ABORT and waits for the next; one that cannot be told is dropped.
    pub async fn end_transaction(&mut self) {
        for slot in &mut self.slots {
            if slot.in_transaction {
                if let State::Open(conversation) = &mut slot.state {
                    if conversation.abort().await.is_err() {
                        slot.state = State::Unopened;
                    }
                }
            }
            (slot.in_transaction, slot.accepted, slot.pending, slot.spent) = (false, false, None, Duration::ZERO);
        }
    }

    /// Whether a transaction is open with any milter.
    pub fn in_transaction(&self) -> bool {
        self.slots.iter().any(|s| s.in_transaction)
    }

    /// The session is over: QUIT to each open conversation.
    pub async fn quit(self) {
        for slot in self.slots {
            if let State::Open(conversation) = slot.state {
                conversation.quit().await;
            }
        }
    }
}

/// A stage before the message.
#[derive(Clone, Copy)]
enum Ask<'a> {
    Mail,
    Rcpt(&'a str),
}

impl Slot {
    /// What a stage's answer leaves to do: `Some` ends the stage (a refusal, or a failure with
    /// `fail="closed"`). An accept ends the milter's part in the message; a discard is about the
    /// message, decided at its end where the policy's `discard=` applies (libmilter's meaning,
    /// at MAIL or RCPT alike); a failure with `fail="open"` drops the milter for the session.
    fn outcome(
        &mut self,
        result: Result<Step, MilterError>,
        fail_open: bool,
        failed_open: &mut Vec<(usize, MilterError)>,
    ) -> Option<StageAnswer> {
        match result {
            Ok(Step::Next | Step::SkipBody) => None,
            Ok(Step::Done) => {
                self.accepted = true;
                None
            }
            Ok(Step::Verdict(verdict @ Verdict::Discard { .. })) => {
                self.pending = Some(verdict);
                None
            }
            Ok(Step::Verdict(verdict)) => Some(StageAnswer::Verdict(self.index, verdict)),
            Err(error) if fail_open => {
                self.state = State::Done;
                failed_open.push((self.index, error));
                None
            }
            Err(error) => Some(StageAnswer::Failed(self.index, error)),
        }
    }

    /// What is left of the transaction's total time.
    fn left(&self, filter: &Filter) -> Duration {
        Duration::from_secs(u64::from(filter.total_timeout)).saturating_sub(self.spent)
    }

    /// Ask one stage within what is left of the total timeout; a failure drops the connection
    /// (the next stage connects again, telling the milter the session and the transaction so
    /// far).
    async fn ask(&mut self, filter: &Filter, envelope: &Envelope<'_>, ask: Ask<'_>) -> Result<Step, MilterError> {
        let started = std::time::Instant::now();
        let left = self.left(filter);
        let result = tokio::time::timeout(left, self.stage(filter, envelope, ask))
            .await
            .unwrap_or(Err(MilterError::Timeout("total")));
        self.spent += started.elapsed();
        if result.is_err() {
            self.state = State::Unopened;
        }
        result
    }

    async fn stage(&mut self, filter: &Filter, envelope: &Envelope<'_>, ask: Ask<'_>) -> Result<Step, MilterError> {
        let replay = matches!(ask, Ask::Rcpt(_));
        if let Some(step) = self.ensure_open(filter, envelope, replay).await? {
            return Ok(step);
        }
        let State::Open(conversation) = &mut self.state else { return Ok(Step::Next) };
        match ask {
            Ask::Mail => conversation.mail(envelope).await,
            Ask::Rcpt(rcpt) => conversation.rcpt(rcpt).await,
        }
    }

    /// Connect and open the conversation if it is not; `replay`: tell a new one the
    /// transaction so far (MAIL and the recipients accepted). `Some(step)`: the milter ended
    /// the matter while being opened.
    async fn ensure_open(
        &mut self,
        filter: &Filter,
        envelope: &Envelope<'_>,
        replay: bool,
    ) -> Result<Option<Step>, MilterError> {
        if !matches!(self.state, State::Unopened) {
            return Ok(None);
        }
        let stream = client::connect(&filter.address, Duration::from_secs(u64::from(filter.connect_timeout))).await?;
        let command = Duration::from_secs(u64::from(filter.command_timeout));
        let mut conversation = Box::new(Conversation::new(stream, command));
        match conversation.open(envelope).await? {
            Step::Next | Step::SkipBody => {}
            Step::Done => {
                self.state = State::Done;
                return Ok(Some(Step::Done));
            }
            Step::Verdict(verdict) => {
                self.state = State::Refusing(verdict.clone());
                return Ok(Some(Step::Verdict(verdict)));
            }
        }
        if replay {
            match conversation.mail(envelope).await? {
                Step::Next | Step::SkipBody => {}
                step => {
                    self.state = State::Open(conversation);
                    return Ok(Some(step));
                }
            }
            for rcpt in envelope.recipients {
                match conversation.rcpt(rcpt).await? {
                    Step::Next | Step::SkipBody => {}
                    step => {
                        self.state = State::Open(conversation);
                        return Ok(Some(step));
                    }
                }
            }
        }
        self.state = State::Open(conversation);
        Ok(None)
    }

    async fn ask_message(
        &mut self,
        filter: &Filter,
        envelope: &Envelope<'_>,
        spool: &crate::spool::SpoolReader,
        body: &mut super::edits::ReplacementBody<'_>,
    ) -> Result<Answer, MilterError> {
        let started = std::time::Instant::now();
        let left = self.left(filter);
        let work = async {
            if let Some(step) = self.ensure_open(filter, envelope, true).await? {
                let verdict = match step {
                    Step::Verdict(v) => v,
                    _ => Verdict::Pass,
                };
                return Ok(Answer { verdict, edits: Vec::new() });
            }
            let State::Open(conversation) = &mut self.state else {
                return Ok(Answer { verdict: Verdict::Pass, edits: Vec::new() });
            };
            let verdict = conversation.message(envelope.queue_id, spool, body).await?;
            Ok(Answer { verdict, edits: conversation.take_edits() })
        };
        let result = tokio::time::timeout(left, work).await.unwrap_or(Err(MilterError::Timeout("total")));
        self.spent += started.elapsed();
        if let State::Open(conversation) = &self.state {
            // Taken to its end, the milter waits for the next MAIL: no ABORT.
            if conversation.message_done() {
                self.in_transaction = false;
            }
        }
        if result.is_err() {
            self.state = State::Unopened;
        }
        result
    }
}
