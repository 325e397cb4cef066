//! Composing messages: one streaming pass over the published grades folds every owner's book
//! (tier counts, changes, churn alerts, movers, follow-ups due) into bounded lists, then each
//! owner's messages are rendered in the owner's locale.
//!
//! Memory is bounded by owners × `max_rows`, not by customers: each list keeps its most
//! important `max_rows` entries and counts the rest.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use chrono::{Datelike, NaiveDate};
use lettre::message::Mailbox;
use serde::Serialize;
use tierwise_domain::grading::{Lifecycle, Policy, Summary};
use tierwise_domain::notify::{
    ChurnSignal, ChurnState, ComponentMove, DUE_SOON_DAYS, FollowUp, FollowUpKind, ScoreState,
    churn_signals, component_moves, follow_up,
};
use tierwise_domain::{Locale, Period};
use tierwise_store::DbConnection;
use tierwise_store::notify::{self as store, BookGrade, BookRow, NewMessage, OwnerContact};

use crate::NotifyError;
use crate::locale::{Catalog, Formatter};
use crate::settings::NotifySettings;
use crate::templates::{Rendered, Templates};

/// Kinds of message, as the outbox names them.
pub mod kind {
    /// An owner's digest after a grading run.
    pub const DIGEST: &str = "digest";
    /// The admins' digest after a grading run.
    pub const ADMIN_DIGEST: &str = "admin_digest";
    /// An owner's churn alerts after a grading run.
    pub const CHURN_ALERT: &str = "churn_alert";
    /// An owner's weekly follow-up reminders.
    pub const REMINDERS: &str = "reminders";
}

/// What composing needs besides the database.
#[derive(Debug, Clone, Copy)]
pub struct Composer<'a> {
    /// The grading policy (tiers, cadences, alert flags).
    pub policy: &'a Policy,
    /// `[notify]`.
    pub settings: &'a NotifySettings,
    /// The templates.
    pub templates: &'a Templates,
    /// Domain of Message-IDs (the sender's).
    pub mail_domain: &'a str,
    /// The day follow-ups are judged on (due within 7 days of it, or before it).
    pub today: NaiveDate,
}

/// Which owners to compose for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owners {
    /// Every owner (and the admins).
    All,
    /// One owner only (previews).
    One(i64),
}

impl Owners {
    fn includes(&self, id: i64) -> bool {
        match self {
            Self::All => true,
            Self::One(one) => *one == id,
        }
    }
}

/// The `cap` entries with the smallest keys, and how many were offered.
#[derive(Debug)]
struct Bounded<K: Ord, T> {
    cap: usize,
    heap: BinaryHeap<Keyed<K, T>>,
    total: usize,
}

#[derive(Debug)]
struct Keyed<K, T>(K, T);

impl<K: Ord, T> PartialEq for Keyed<K, T> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl<K: Ord, T> Eq for Keyed<K, T> {}
impl<K: Ord, T> PartialOrd for Keyed<K, T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<K: Ord, T> Ord for Keyed<K, T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl<K: Ord, T> Bounded<K, T> {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            heap: BinaryHeap::new(),
            total: 0,
        }
    }

    /// Offers an entry; `make` runs only when it is kept.
    fn offer(&mut self, key: K, make: impl FnOnce() -> T) {
        self.total += 1;
        if self.heap.len() < self.cap {
            self.heap.push(Keyed(key, make()));
        } else if self.heap.peek().is_some_and(|top| key < top.0) {
            self.heap.pop();
            self.heap.push(Keyed(key, make()));
        }
    }

    fn hidden(&self) -> usize {
        self.total - self.heap.len()
    }

    fn into_sorted(self) -> Vec<T> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|Keyed(_, t)| t)
            .collect()
    }
}

#[derive(Debug)]
struct Named {
    name: String,
    external_id: String,
}

#[derive(Debug)]
struct ChangeItem {
    who: Named,
    from: Option<u8>,
    to: Option<u8>,
    moves: Vec<ComponentMove>,
    tier_reason: String,
}

#[derive(Debug)]
struct AlertItem {
    who: Named,
    tier_before: Option<u8>,
    signals: Vec<ChurnSignal>,
}

#[derive(Debug)]
struct MoverItem {
    who: Named,
    tier: Option<u8>,
    before: f64,
    now: f64,
}

#[derive(Debug)]
struct FollowItem {
    who: Named,
    tier: u8,
    follow: FollowUp,
}

/// Promotions and demotions: bigger moves first, demotions before promotions, then by id.
type ChangeKey = (Reverse<u8>, bool, i64);
/// Composite change in millionths, then id.
type MoverKey = (i64, i64);

/// One owner's book, folded from the grade stream.
#[derive(Debug)]
struct Book {
    customers: u64,
    tiers_now: Vec<u64>,
    tiers_before: Vec<u64>,
    changes: Bounded<ChangeKey, ChangeItem>,
    alerts: Bounded<i64, AlertItem>,
    up: Bounded<Reverse<MoverKey>, MoverItem>,
    down: Bounded<MoverKey, MoverItem>,
    follow_ups: Bounded<(NaiveDate, FollowUpKind, i64), FollowItem>,
    overdue: u64,
    due_soon: u64,
}

impl Book {
    fn new(tiers: usize, max_rows: usize, top_movers: usize) -> Self {
        Self {
            customers: 0,
            tiers_now: vec![0; tiers + 1],
            tiers_before: vec![0; tiers + 1],
            changes: Bounded::new(max_rows),
            alerts: Bounded::new(max_rows),
            up: Bounded::new(top_movers),
            down: Bounded::new(top_movers),
            follow_ups: Bounded::new(max_rows),
            overdue: 0,
            due_soon: 0,
        }
    }
}

fn scores(g: &BookGrade) -> ScoreState {
    let score = |s: Option<i32>| s.and_then(|s| u8::try_from(s).ok());
    ScoreState {
        rfm: match (score(g.r_score), score(g.f_score), score(g.m_score)) {
            (Some(r), Some(f), Some(m)) => Some([r, f, m]),
            _ => None,
        },
        abc: g.abc_class.clone(),
        credit: Some(g.credit_grade.clone()),
        lifecycle: Lifecycle::parse(&g.lifecycle),
        composite: g.composite,
    }
}

/// Folds the grade stream into books. `with_previous` also compares with the period before.
struct Folder<'a> {
    c: &'a Composer<'a>,
    period: Period,
    owners: HashMap<i64, usize>,
    books: Vec<Option<Book>>,
    contacts: HashMap<i64, store::LastContacts>,
    with_previous: bool,
}

impl Folder<'_> {
    fn fold(&mut self, row: BookRow) {
        let Some(&slot) = self.owners.get(&row.owner_id) else {
            return;
        };
        let policy = self.c.policy;
        let tiers = policy.tiers.levels.len();
        let book = self.books[slot].get_or_insert_with(|| {
            Book::new(tiers, self.c.settings.max_rows, self.c.settings.top_movers)
        });
        let tier_of = |g: &BookGrade| g.tier.as_deref().and_then(|t| policy.tier_index(t));
        let now_tier = tier_of(&row.now);
        let before_tier = row.before.as_ref().and_then(tier_of);
        let id = row.customer_id;
        let who = || Named {
            name: row.name.clone(),
            external_id: row.external_id.clone(),
        };
        book.customers += 1;
        book.tiers_now[now_tier.map_or(tiers, usize::from)] += 1;
        if row.before.is_some() {
            book.tiers_before[before_tier.map_or(tiers, usize::from)] += 1;
        }

        if self.with_previous {
            if before_tier != now_tier {
                let before_scores = row.before.as_ref().map(scores).unwrap_or_default();
                let now_scores = scores(&row.now);
                let steps = match (before_tier, now_tier) {
                    (Some(b), Some(n)) => b.abs_diff(n),
                    _ => u8::MAX,
                };
                let demotion = matches!((before_tier, now_tier), (Some(b), Some(n)) if n > b)
                    || now_tier.is_none();
                book.changes
                    .offer((Reverse(steps), !demotion, id), || ChangeItem {
                        who: who(),
                        from: before_tier,
                        to: now_tier,
                        moves: component_moves(&before_scores, &now_scores),
                        tier_reason: row.now.tier_reason.clone(),
                    });
            }
            if let Some(before) = &row.before {
                let state = |tier, g: &BookGrade| ChurnState {
                    tier,
                    lifecycle: Lifecycle::parse(&g.lifecycle).unwrap_or(Lifecycle::Active),
                    p_alive: g.p_alive,
                };
                let signals = churn_signals(
                    policy,
                    &state(before_tier, before),
                    &state(now_tier, &row.now),
                );
                if !signals.is_empty() {
                    book.alerts.offer(id, || AlertItem {
                        who: who(),
                        tier_before: before_tier,
                        signals,
                    });
                }
                if let (Some(b), Some(n)) = (before.composite, row.now.composite) {
                    let delta = ((n - b) * 1e6).round() as i64;
                    let item = || MoverItem {
                        who: who(),
                        tier: now_tier,
                        before: b,
                        now: n,
                    };
                    if delta > 0 {
                        book.up.offer(Reverse((delta, -id)), item);
                    } else if delta < 0 {
                        book.down.offer((delta, id), item);
                    }
                }
            }
        }

        // Follow-ups: tiered customers not on the black list.
        if let Some(tier) = now_tier
            && row.now.tier_reason != "blocked"
        {
            let since = row.now.tier_since.unwrap_or(self.period.as_of());
            let last = self.contacts.get(&id).copied().unwrap_or_default();
            for kind in FollowUpKind::ALL {
                let last_contact = match kind {
                    FollowUpKind::Call => last.call,
                    FollowUpKind::Visit => last.visit,
                };
                if let Some(f) = follow_up(
                    policy,
                    tier,
                    kind,
                    last_contact,
                    since,
                    self.c.today,
                    DUE_SOON_DAYS,
                ) {
                    if f.is_overdue(self.c.today) {
                        book.overdue += 1;
                    } else {
                        book.due_soon += 1;
                    }
                    book.follow_ups.offer((f.due_on, kind, id), || FollowItem {
                        who: who(),
                        tier,
                        follow: f,
                    });
                }
            }
        }
    }
}

/// Streams the published grades of `period` into per-owner books.
fn fold_books(
    conn: &mut DbConnection,
    c: &Composer<'_>,
    period: Period,
    owners: &[OwnerContact],
    with_previous: bool,
) -> Result<Option<Vec<Option<Book>>>, NotifyError> {
    let mut folder = Folder {
        c,
        period,
        owners: owners.iter().enumerate().map(|(i, o)| (o.id, i)).collect(),
        books: (0..owners.len()).map(|_| None).collect(),
        contacts: store::last_contacts(conn, c.today)?,
        with_previous,
    };
    let found = store::for_each_book_row(conn, period, with_previous, |row| {
        folder.fold(row);
        Ok(())
    })?;
    Ok(found.then_some(folder.books))
}

// ---------------------------------------------------------------------------------------------
// Views: what templates see. Every figure is already formatted for the reader's locale.

/// A tier's bar in the distribution chart.
#[derive(Debug, Clone, Serialize)]
pub struct TierBar {
    name: String,
    colour: String,
    now: String,
    before: String,
    change: String,
    /// Bar widths in percent of the largest count (0–100).
    now_width: u32,
    before_width: u32,
}

#[derive(Debug, Serialize)]
struct ChangeView {
    customer: String,
    external_id: String,
    from: String,
    to: String,
    promoted: bool,
    reasons: String,
}

#[derive(Debug, Serialize)]
struct AlertView {
    customer: String,
    external_id: String,
    tier: String,
    what: String,
    action: String,
}

#[derive(Debug, Serialize)]
struct MoverView {
    customer: String,
    tier: String,
    before: String,
    now: String,
    change: String,
}

#[derive(Debug, Serialize)]
struct FollowView {
    customer: String,
    external_id: String,
    tier: String,
    kind: String,
    last_contact: String,
    due_on: String,
    status: String,
    overdue: bool,
}

/// A list, its shown rows and how many more there are.
#[derive(Debug, Serialize)]
struct ListView<T> {
    rows: Vec<T>,
    total: String,
    more: String,
    has_more: bool,
}

fn list_view<T>(rows: Vec<T>, total: usize, hidden: usize, f: &Formatter) -> ListView<T> {
    ListView {
        rows,
        total: f.integer(total as i64),
        more: f.integer(hidden as i64),
        has_more: hidden > 0,
    }
}

#[derive(Debug, Serialize)]
struct DigestView {
    owner: String,
    period: String,
    previous_period: String,
    has_previous: bool,
    customers: String,
    distribution: Vec<TierBar>,
    changes: ListView<ChangeView>,
    alerts: ListView<AlertView>,
    movers_up: Vec<MoverView>,
    movers_down: Vec<MoverView>,
    follow_ups: ListView<FollowView>,
    overdue: String,
    due_soon: String,
    dashboard_url: String,
}

#[derive(Debug, Serialize)]
struct AlertMailView {
    owner: String,
    period: String,
    alerts: ListView<AlertView>,
    dashboard_url: String,
}

#[derive(Debug, Serialize)]
struct ReminderView {
    owner: String,
    today: String,
    week: String,
    follow_ups: ListView<FollowView>,
    overdue: String,
    due_soon: String,
    dashboard_url: String,
}

#[derive(Debug, Serialize)]
struct MatrixView {
    tiers: Vec<String>,
    rows: Vec<MatrixRow>,
}

#[derive(Debug, Serialize)]
struct MatrixRow {
    from: String,
    cells: Vec<String>,
}

#[derive(Debug, Serialize)]
struct ImportView {
    started: String,
    source: String,
    kind: String,
    status: String,
    rows: String,
    rejected: String,
    failed: bool,
}

#[derive(Debug, Serialize)]
struct RunView {
    period: String,
    status: String,
    started: String,
    seconds: String,
    graded: String,
    changes: String,
    failed: bool,
}

#[derive(Debug, Serialize)]
struct AdminView {
    period: String,
    previous_period: String,
    customers: String,
    graded: String,
    tier_changes: String,
    distribution: Vec<TierBar>,
    matrix: MatrixView,
    imports: Vec<ImportView>,
    runs: Vec<RunView>,
    outbox: Vec<(String, String)>,
    dashboard_url: String,
}

/// Per-locale words and formatting.
struct Speaker {
    catalog: Catalog,
    f: Formatter,
}

impl Speaker {
    fn new(locale: Locale) -> Result<Self, NotifyError> {
        Ok(Self {
            catalog: Catalog::builtin(locale)?,
            f: Formatter::new(locale),
        })
    }
}

struct Speakers {
    en: Speaker,
    zh: Speaker,
}

impl Speakers {
    fn new() -> Result<Self, NotifyError> {
        Ok(Self {
            en: Speaker::new(Locale::En)?,
            zh: Speaker::new(Locale::ZhCn)?,
        })
    }

    fn of(&self, locale: Locale) -> &Speaker {
        match locale {
            Locale::En => &self.en,
            Locale::ZhCn => &self.zh,
        }
    }
}

impl Composer<'_> {
    fn tier_label(&self, tier: Option<u8>, s: &Speaker) -> String {
        match tier {
            Some(t) => self.policy.tier_name(t).to_owned(),
            None => s.catalog.get("tier.none").to_owned(),
        }
    }

    fn bars(&self, now: &[u64], before: &[u64], s: &Speaker) -> Vec<TierBar> {
        let max = now.iter().chain(before).copied().max().unwrap_or(0).max(1);
        let width = |n: u64| u32::try_from(n * 100 / max).unwrap_or(100);
        let levels = &self.policy.tiers.levels;
        (0..now.len())
            .map(|i| {
                let (name, colour) = match levels.get(i) {
                    Some(l) => (l.name.clone(), l.colour.clone()),
                    None => (s.catalog.get("tier.none").to_owned(), "#c8ccd2".to_owned()),
                };
                let (n, b) = (now[i], before.get(i).copied().unwrap_or(0));
                TierBar {
                    name,
                    colour,
                    now: s.f.integer(n as i64),
                    before: s.f.integer(b as i64),
                    change: match n as i64 - b as i64 {
                        0 => "0".into(),
                        d if d > 0 => format!("+{}", s.f.integer(d)),
                        d => format!("\u{2212}{}", s.f.integer(-d)),
                    },
                    now_width: width(n),
                    before_width: width(b),
                }
            })
            .collect()
    }

    fn move_text(&self, m: &ComponentMove, s: &Speaker) -> String {
        let key = match m.component {
            tierwise_domain::notify::Component::Recency => "component.recency",
            tierwise_domain::notify::Component::Frequency => "component.frequency",
            tierwise_domain::notify::Component::Monetary => "component.monetary",
            tierwise_domain::notify::Component::Abc => "component.abc",
            tierwise_domain::notify::Component::Credit => "component.credit",
            tierwise_domain::notify::Component::Lifecycle => "component.lifecycle",
        };
        let value = |v: &str| match (m.component, v) {
            (tierwise_domain::notify::Component::Lifecycle, _) => {
                s.catalog.get(&format!("lifecycle.{v}")).to_owned()
            }
            (tierwise_domain::notify::Component::Credit, "unrated") => {
                s.catalog.get("credit.unrated").to_owned()
            }
            _ => v.to_owned(),
        };
        format!("{} {}→{}", s.catalog.get(key), value(&m.from), value(&m.to))
    }

    fn change_view(&self, c: ChangeItem, s: &Speaker) -> ChangeView {
        let mut reasons: Vec<String> = Vec::new();
        if c.to.is_none() && c.tier_reason == "not_graded" {
            // Left the graded population: that, not its scores, is why it has no tier.
            reasons.push(s.catalog.get("reason.not_graded").to_owned());
        }
        reasons.extend(c.moves.iter().map(|m| self.move_text(m, s)));
        match c.tier_reason.as_str() {
            "held" => reasons.push(s.catalog.get("reason.held").to_owned()),
            "pinned" => reasons.push(s.catalog.get("reason.pinned").to_owned()),
            "blocked" => reasons.push(s.catalog.get("reason.blocked").to_owned()),
            _ if reasons.is_empty() => reasons.push(s.catalog.get("reason.relative").to_owned()),
            _ => {}
        }
        let separator = match s.f.locale() {
            Locale::En => "; ",
            Locale::ZhCn => "；",
        };
        ChangeView {
            customer: c.who.name,
            external_id: c.who.external_id,
            from: self.tier_label(c.from, s),
            to: self.tier_label(c.to, s),
            promoted: matches!((c.from, c.to), (Some(b), Some(n)) if n < b)
                || (c.from.is_none() && c.to.is_some()),
            reasons: reasons.join(separator),
        }
    }

    fn alert_view(&self, a: AlertItem, s: &Speaker) -> AlertView {
        let what: Vec<String> = a
            .signals
            .iter()
            .map(|signal| match signal {
                ChurnSignal::Lifecycle { from, to } => format!(
                    "{} {}→{}",
                    s.catalog.get("component.lifecycle"),
                    s.catalog.get(&format!("lifecycle.{}", from.as_str())),
                    s.catalog.get(&format!("lifecycle.{}", to.as_str()))
                ),
                ChurnSignal::PAliveFell { from, to } => {
                    format!("{} {from:.2}→{to:.2}", s.catalog.get("alert.p_alive"))
                }
                ChurnSignal::Demoted { from, to } => format!(
                    "{} {}→{}",
                    s.catalog.get("alert.demoted"),
                    self.policy.tier_name(*from),
                    self.policy.tier_name(*to)
                ),
            })
            .collect();
        let tier = self.tier_label(a.tier_before, s);
        let action = a
            .tier_before
            .and_then(|t| self.settings.churn_actions.get(self.policy.tier_name(t)))
            .and_then(|text| text.for_locale(s.f.locale()))
            .map_or_else(
                || s.catalog.get("alert.default_action").to_owned(),
                str::to_owned,
            );
        AlertView {
            customer: a.who.name,
            external_id: a.who.external_id,
            tier,
            what: what.join(match s.f.locale() {
                Locale::En => "; ",
                Locale::ZhCn => "；",
            }),
            action,
        }
    }

    fn mover_view(&self, m: MoverItem, s: &Speaker) -> MoverView {
        MoverView {
            customer: m.who.name,
            tier: self.tier_label(m.tier, s),
            before: s.f.score(m.before),
            now: s.f.score(m.now),
            change: s.f.delta(m.now - m.before),
        }
    }

    fn follow_view(&self, item: FollowItem, s: &Speaker) -> FollowView {
        let f = item.follow;
        let days = f.days_overdue(self.today);
        let status = if days > 0 {
            s.catalog
                .get("follow.overdue_days")
                .replace("{n}", &s.f.integer(days))
        } else if days == 0 {
            s.catalog.get("follow.due_today").to_owned()
        } else {
            s.catalog
                .get("follow.due_in_days")
                .replace("{n}", &s.f.integer(-days))
        };
        FollowView {
            customer: item.who.name,
            external_id: item.who.external_id,
            tier: self.policy.tier_name(item.tier).to_owned(),
            kind: s
                .catalog
                .get(&format!("follow.{}", f.kind.as_str()))
                .to_owned(),
            last_contact: f
                .last_contact
                .map_or_else(|| s.catalog.get("follow.never").to_owned(), |d| s.f.date(d)),
            due_on: s.f.date(f.due_on),
            status,
            overdue: days > 0,
        }
    }

    fn follow_list(
        &self,
        book_follow: Bounded<(NaiveDate, FollowUpKind, i64), FollowItem>,
        s: &Speaker,
    ) -> ListView<FollowView> {
        let (total, hidden) = (book_follow.total, book_follow.hidden());
        let rows = book_follow
            .into_sorted()
            .into_iter()
            .map(|i| self.follow_view(i, s))
            .collect();
        list_view(rows, total, hidden, &s.f)
    }

    fn alert_list(&self, alerts: Bounded<i64, AlertItem>, s: &Speaker) -> ListView<AlertView> {
        let (total, hidden) = (alerts.total, alerts.hidden());
        let rows = alerts
            .into_sorted()
            .into_iter()
            .map(|a| self.alert_view(a, s))
            .collect();
        list_view(rows, total, hidden, &s.f)
    }

    fn message(
        &self,
        kind: &str,
        dedupe_key: String,
        owner_id: Option<i64>,
        recipient: String,
        rendered: Rendered,
    ) -> NewMessage {
        let local: String = dedupe_key
            .chars()
            .map(|ch| {
                if ch.is_ascii_alphanumeric() || ch == '-' {
                    ch
                } else {
                    '.'
                }
            })
            .collect();
        NewMessage {
            message_id: format!("<{local}@{}>", self.mail_domain),
            dedupe_key,
            kind: kind.to_owned(),
            owner_id,
            recipient,
            subject: rendered.subject,
            body_text: rendered.text,
            body_html: rendered.html,
        }
    }
}

fn recipient(owner: &OwnerContact) -> Result<String, NotifyError> {
    let address = owner
        .email
        .parse()
        .map_err(|e: lettre::address::AddressError| NotifyError::Recipient {
            recipient: owner.email.clone(),
            reason: e.to_string(),
        })?;
    let name = (!owner.name.trim().is_empty()).then(|| owner.name.clone());
    Ok(Mailbox::new(name, address).to_string())
}

fn owner_locale(owner: &OwnerContact) -> Locale {
    Locale::parse(&owner.locale).unwrap_or_default()
}

/// The digests, churn alerts and admin digests of `period`'s published grades. None when the
/// period has no published run.
pub fn compose_period(
    conn: &mut DbConnection,
    c: &Composer<'_>,
    period: Period,
    who: Owners,
) -> Result<Option<Vec<NewMessage>>, NotifyError> {
    let owners: Vec<OwnerContact> = store::owners(conn)?
        .into_iter()
        .filter(|o| who.includes(o.id))
        .collect();
    let has_previous = tierwise_store::grading::published_run(conn, period.prev())?.is_some();
    let Some(books) = fold_books(conn, c, period, &owners, has_previous)? else {
        return Ok(None);
    };
    let speakers = Speakers::new()?;
    let mut messages = Vec::new();
    for (owner, book) in owners.iter().zip(books) {
        let Some(book) = book else { continue };
        let s = speakers.of(owner_locale(owner));
        let to = match recipient(owner) {
            Ok(to) => to,
            Err(e) => {
                tracing::warn!(owner = owner.id, error = %e, "skipped an owner without a usable address");
                continue;
            }
        };
        let alerts_for_mail = if book.alerts.total > 0 {
            // The alert email lists the same alerts as the digest; fold them once, view twice.
            Some(copy_alerts(&book.alerts))
        } else {
            None
        };
        let changes_total = book.changes.total;
        let changes_hidden = book.changes.hidden();
        let view = DigestView {
            owner: owner.name.clone(),
            period: s.f.period(period),
            previous_period: s.f.period(period.prev()),
            has_previous,
            customers: s.f.integer(book.customers as i64),
            distribution: c.bars(&book.tiers_now, &book.tiers_before, s),
            changes: list_view(
                book.changes
                    .into_sorted()
                    .into_iter()
                    .map(|ch| c.change_view(ch, s))
                    .collect(),
                changes_total,
                changes_hidden,
                &s.f,
            ),
            alerts: c.alert_list(book.alerts, s),
            movers_up: book
                .up
                .into_sorted()
                .into_iter()
                .map(|m| c.mover_view(m, s))
                .collect(),
            movers_down: book
                .down
                .into_sorted()
                .into_iter()
                .map(|m| c.mover_view(m, s))
                .collect(),
            follow_ups: c.follow_list(book.follow_ups, s),
            overdue: s.f.integer(book.overdue as i64),
            due_soon: s.f.integer(book.due_soon as i64),
            dashboard_url: c.settings.dashboard_url.clone(),
        };
        let rendered = c.templates.render("digest", &s.catalog, &view)?;
        messages.push(c.message(
            kind::DIGEST,
            format!("digest:{period}:owner:{}", owner.id),
            Some(owner.id),
            to.clone(),
            rendered,
        ));
        if let Some(alerts) = alerts_for_mail {
            let view = AlertMailView {
                owner: owner.name.clone(),
                period: s.f.period(period),
                alerts: c.alert_list(alerts, s),
                dashboard_url: c.settings.dashboard_url.clone(),
            };
            let rendered = c.templates.render("churn_alert", &s.catalog, &view)?;
            messages.push(c.message(
                kind::CHURN_ALERT,
                format!("churn_alert:{period}:owner:{}", owner.id),
                Some(owner.id),
                to,
                rendered,
            ));
        }
    }
    if who == Owners::All {
        messages.extend(compose_admin(conn, c, period, &speakers)?);
    }
    Ok(Some(messages))
}

/// A copy of the kept alerts (the digest and the alert email each render them).
fn copy_alerts(alerts: &Bounded<i64, AlertItem>) -> Bounded<i64, AlertItem> {
    let mut copy = Bounded::new(alerts.cap);
    for Keyed(key, item) in alerts.heap.iter() {
        copy.offer(*key, || AlertItem {
            who: Named {
                name: item.who.name.clone(),
                external_id: item.who.external_id.clone(),
            },
            tier_before: item.tier_before,
            signals: item.signals.clone(),
        });
    }
    copy.total = alerts.total;
    copy
}

fn compose_admin(
    conn: &mut DbConnection,
    c: &Composer<'_>,
    period: Period,
    speakers: &Speakers,
) -> Result<Vec<NewMessage>, NotifyError> {
    if c.settings.admins.is_empty() {
        return Ok(Vec::new());
    }
    let summary_of = |run: Option<tierwise_store::grading::GradingRun>| -> Summary {
        run.and_then(|r| r.summary)
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default()
    };
    let now = summary_of(tierwise_store::grading::published_run(conn, period)?);
    let before = summary_of(tierwise_store::grading::published_run(conn, period.prev())?);
    let imports = tierwise_store::runs::recent_import_runs(conn, 10)?;
    let runs = tierwise_store::grading::recent_runs(conn, 10)?;
    let outbox = store::outbox_counts(conn)?;
    let s = speakers.of(c.settings.admin_locale);
    let counts = |summary: &Summary| -> Vec<u64> {
        let mut v: Vec<u64> = c
            .policy
            .tiers
            .levels
            .iter()
            .map(|l| {
                summary
                    .tiers
                    .iter()
                    .find(|(name, _)| *name == l.name)
                    .map_or(0, |(_, g)| g.customers)
            })
            .collect();
        v.push(
            summary
                .tiers
                .iter()
                .find(|(name, _)| name == tierwise_domain::grading::summary::NO_TIER)
                .map_or(0, |(_, g)| g.customers),
        );
        v
    };
    let names: Vec<String> = c
        .policy
        .tiers
        .levels
        .iter()
        .map(|l| l.name.clone())
        .chain([tierwise_domain::grading::summary::NO_TIER.to_owned()])
        .collect();
    let label = |n: &str| {
        if n == tierwise_domain::grading::summary::NO_TIER {
            s.catalog.get("tier.none").to_owned()
        } else {
            n.to_owned()
        }
    };
    let matrix = MatrixView {
        tiers: names.iter().map(|n| label(n)).collect(),
        rows: names
            .iter()
            .map(|from| MatrixRow {
                from: label(from),
                cells: names
                    .iter()
                    .map(|to| {
                        let n = now
                            .migration
                            .get(from)
                            .and_then(|r| r.get(to))
                            .copied()
                            .unwrap_or(0);
                        s.f.integer(n as i64)
                    })
                    .collect(),
            })
            .collect(),
    };
    let view = AdminView {
        period: s.f.period(period),
        previous_period: s.f.period(period.prev()),
        customers: s.f.integer(now.customers as i64),
        graded: s.f.integer(now.graded as i64),
        tier_changes: s.f.integer(now.tier_changes as i64),
        distribution: c.bars(&counts(&now), &counts(&before), s),
        matrix,
        imports: imports
            .iter()
            .map(|r| ImportView {
                started: s.f.date(r.started_at.date()),
                source: r.source.clone(),
                kind: r.kind.clone(),
                status: s
                    .catalog
                    .get(&format!("import_status.{}", r.status.as_str()))
                    .to_owned(),
                rows: s.f.integer(r.totals.rows_read as i64),
                rejected: s.f.integer(r.totals.rows_rejected as i64),
                failed: r.error.is_some(),
            })
            .collect(),
        runs: runs
            .iter()
            .map(|r| RunView {
                period: r.period.to_string(),
                status: s
                    .catalog
                    .get(&format!("run_status.{}", r.status.as_str()))
                    .to_owned(),
                started: s.f.date(r.started_at.date()),
                seconds: r
                    .finished_at
                    .map(|f| format!("{:.1}", (f - r.started_at).num_milliseconds() as f64 / 1e3))
                    .unwrap_or_default(),
                graded: s.f.integer(r.graded),
                changes: s.f.integer(r.tier_changes),
                failed: r.error.is_some(),
            })
            .collect(),
        outbox: outbox
            .into_iter()
            .map(|(status, n)| {
                (
                    s.catalog.get(&format!("outbox_status.{status}")).to_owned(),
                    s.f.integer(n),
                )
            })
            .collect(),
        dashboard_url: c.settings.dashboard_url.clone(),
    };
    let rendered = c.templates.render("admin_digest", &s.catalog, &view)?;
    let mut messages = Vec::new();
    for admin in &c.settings.admins {
        let address: lettre::Address =
            admin
                .parse()
                .map_err(|e: lettre::address::AddressError| NotifyError::Recipient {
                    recipient: admin.clone(),
                    reason: e.to_string(),
                })?;
        messages.push(c.message(
            kind::ADMIN_DIGEST,
            format!("admin_digest:{period}:{admin}"),
            None,
            Mailbox::new(None, address).to_string(),
            rendered.clone(),
        ));
    }
    Ok(messages)
}

/// The ISO week of `day`, as reminders are keyed: `2026-W48`.
pub fn iso_week(day: NaiveDate) -> String {
    let w = day.iso_week();
    format!("{}-W{:02}", w.year(), w.week())
}

/// Each owner's follow-ups due within 7 days of `today` or overdue, from the newest published
/// period. None when nothing has been graded.
pub fn compose_reminders(
    conn: &mut DbConnection,
    c: &Composer<'_>,
    who: Owners,
) -> Result<Option<Vec<NewMessage>>, NotifyError> {
    let Some(period) = store::latest_published_period(conn)? else {
        return Ok(None);
    };
    let owners: Vec<OwnerContact> = store::owners(conn)?
        .into_iter()
        .filter(|o| who.includes(o.id))
        .collect();
    let Some(books) = fold_books(conn, c, period, &owners, false)? else {
        return Ok(None);
    };
    let speakers = Speakers::new()?;
    let week = iso_week(c.today);
    let mut messages = Vec::new();
    for (owner, book) in owners.iter().zip(books) {
        let Some(book) = book.filter(|b| b.follow_ups.total > 0) else {
            continue;
        };
        let Ok(to) = recipient(owner) else { continue };
        let s = speakers.of(owner_locale(owner));
        let view = ReminderView {
            owner: owner.name.clone(),
            today: s.f.date(c.today),
            week: week.clone(),
            overdue: s.f.integer(book.overdue as i64),
            due_soon: s.f.integer(book.due_soon as i64),
            follow_ups: c.follow_list(book.follow_ups, s),
            dashboard_url: c.settings.dashboard_url.clone(),
        };
        let rendered = c.templates.render("reminders", &s.catalog, &view)?;
        messages.push(c.message(
            kind::REMINDERS,
            format!("reminders:{week}:owner:{}", owner.id),
            Some(owner.id),
            to,
            rendered,
        ));
    }
    Ok(Some(messages))
}
