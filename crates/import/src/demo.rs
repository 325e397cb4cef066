//! Deterministic generator of realistic tierwise demo data, written as CSV files.
//!
//! Customers follow a BG/NBD-like buying model: a Gamma-distributed purchase
//! rate, a Beta-distributed dropout chance after each purchase and a log-normal
//! ticket size. That gives the skew the grading demo needs (Pareto revenue,
//! churned-looking customers, a few heavy buyers). Everything is streamed row by
//! row from one seeded RNG, so memory does not grow with the number of orders
//! and the same spec always yields byte-identical files.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use chrono::{Days, Months, NaiveDate};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Beta, Distribution, Exp1, Gamma, LogNormal};

/// Parameters of one demo data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSpec {
    /// Seed of the random generator; same spec => same bytes.
    pub seed: u64,
    /// Number of customer rows (buyers plus ~5% prospects).
    pub customers: usize,
    /// Number of account owners (sales reps).
    pub owners: usize,
    /// Reference date; no generated date lies after it.
    pub as_of: NaiveDate,
    /// Length of the order history window ending at `as_of`.
    pub history_months: u32,
}

impl Default for DemoSpec {
    fn default() -> Self {
        Self {
            seed: 42,
            customers: 2000,
            owners: 8,
            as_of: NaiveDate::from_ymd_opt(2026, 10, 31).unwrap_or_default(),
            history_months: 36,
        }
    }
}

/// Paths of the written files and their row counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoFiles {
    /// `owners.csv`.
    pub owners: PathBuf,
    /// `customers.csv`.
    pub customers: PathBuf,
    /// `orders.csv`.
    pub orders: PathBuf,
    /// `invoices.csv`.
    pub invoices: PathBuf,
    /// `activities.csv`.
    pub activities: PathBuf,
    /// Data rows written per file (header excluded).
    pub counts: DemoCounts,
}

/// Number of data rows written per file (header excluded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DemoCounts {
    /// Rows in `owners.csv`.
    pub owners: u64,
    /// Rows in `customers.csv`.
    pub customers: u64,
    /// Rows in `orders.csv`, refunds included.
    pub orders: u64,
    /// Rows in `invoices.csv` (one per positive order).
    pub invoices: u64,
    /// Rows in `activities.csv`.
    pub activities: u64,
}

/// Failure while generating demo data.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Creating the directory or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The CSV writer failed.
    #[error("CSV error on {path}: {source}")]
    Csv {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        source: csv::Error,
    },
    /// The spec cannot produce data (zero counts, dates out of range).
    #[error("invalid demo spec: {0}")]
    InvalidSpec(String),
}

// Word lists are `|`-separated strings (`hanzi:pinyin` where an ASCII form is needed)
// so the vocabulary stays compact and easy to extend.
const CITIES: &str = "杭州:hangzhou|上海:shanghai|北京:beijing|深圳:shenzhen|广州:guangzhou|\
    苏州:suzhou|南京:nanjing|成都:chengdu|武汉:wuhan|宁波:ningbo|厦门:xiamen|青岛:qingdao|\
    天津:tianjin|重庆:chongqing|西安:xian|长沙:changsha";
const CN_WORDS: &str = "云帆:yunfan|华信:huaxin|博远:boyuan|恒通:hengtong|瑞丰:ruifeng|\
    启明:qiming|天工:tiangong|鼎盛:dingsheng|金桥:jinqiao|新元:xinyuan|锐驰:ruichi|嘉禾:jiahe|\
    众诚:zhongcheng|远景:yuanjing|明德:mingde|海纳:haina";
const CN_INDUSTRIES: &str = "科技:tech|贸易:trading|电子:electronics|机械:machinery|\
    物流:logistics|医疗器械:medical|新材料:materials|信息技术:it|食品:food|包装:packaging";
const EN_WORDS: &str = "Northwind|Blue Harbor|Summit|Evergreen|Silverline|Redwood|Ironbridge|\
    Brightwater|Oakridge|Crescent|Pioneer|Granite|Harborview|Lakeside";
const EN_INDUSTRIES: &str =
    "Traders|Logistics|Components|Systems|Supplies|Industries|Foods|Devices|Materials|Analytics";
const EN_SUFFIXES: &str = "Ltd|Inc.|GmbH|LLC|Pte. Ltd.|Co.";
const CN_SURNAMES: &str = "李:li|王:wang|张:zhang|刘:liu|陈:chen|杨:yang|赵:zhao|黄:huang|\
    周:zhou|吴:wu|徐:xu|孙:sun|韩:han|林:lin";
const CN_GIVEN: &str = "雷:lei|梅梅:meimei|伟:wei|芳:fang|娜:na|静:jing|强:qiang|洋:yang|\
    婷:ting|晓明:xiaoming|子涵:zihan|浩然:haoran|欣怡:xinyi";
const EN_FIRST: &str = "Emma|Liam|Olivia|Noah|Sophia|James|Ava|Lucas|Mia|Oliver|Charlotte|Ethan";
const EN_LAST: &str =
    "Wilson|Smith|Brown|Taylor|Johnson|Miller|Davis|Clark|Walker|Wright|Hughes|Turner";
/// The first owners (name:email local part); further owners get composed names.
const OWNERS: &str = "李雷:li.lei|韩梅梅:han.meimei|Emma Wilson:emma.wilson|王芳:wang.fang|\
    James Taylor:james.taylor|陈静:chen.jing|Olivia Brown:olivia.brown|张伟:zhang.wei";
// Repeats weight the draw: calls and emails dominate real CRM logs.
const KINDS: &str = "call|call|call|email|email|visit|meeting";
const NOTES: &str = "季度回访|Pricing follow-up|新品介绍|Contract renewal|催款提醒|\
    Quarterly business review|需求调研|Onboarding check-in|报价跟进|Delivery issue follow-up|\
    技术支持回访|Intro call";
const PHONE_PREFIXES: &str = "130|131|135|136|138|139|150|152|158|186|188|189";
// Canonical importer field names.
const OWNERS_HEADER: &str = "email,name,locale,owner_id";
const CUSTOMERS_HEADER: &str = "customer_id,name,contact_name,contact_email,contact_phone,\
    owner_email,created_date,prospect_rating,nps";
const ORDERS_HEADER: &str = "order_id,customer_id,order_date,amount,cost,currency";
const INVOICES_HEADER: &str =
    "invoice_id,customer_id,order_id,issued_date,due_date,amount,paid_date,currency";
const ACTIVITIES_HEADER: &str = "activity_id,customer_id,kind,occurred_at,owner_email,note";
/// Average month length, to turn monthly rates into daily ones.
const DAYS_PER_MONTH: f64 = 30.4375;

/// Entry `i` of a `|`-separated word list.
fn nth(list: &'static str, i: usize) -> Option<&'static str> {
    list.split('|').nth(i).map(str::trim)
}

/// Picks a uniformly random entry of a `|`-separated word list.
fn pick(rng: &mut StdRng, list: &'static str) -> &'static str {
    let n = list.split('|').count();
    nth(list, rng.random_range(0..n)).unwrap_or_default()
}

/// Picks a `hanzi:pinyin` entry and splits it.
fn pick2(rng: &mut StdRng, list: &'static str) -> (&'static str, &'static str) {
    pick(rng, list).split_once(':').unwrap_or_default()
}

/// Builds a `map_err` adapter tagging an I/O error with its path.
fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    |source| DemoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Builds a `map_err` adapter tagging a CSV error with its path.
fn csv_err(path: &Path) -> impl FnOnce(csv::Error) -> DemoError + '_ {
    |source| DemoError::Csv {
        path: path.to_path_buf(),
        source,
    }
}

/// Formats integer cents as a decimal with exactly two places (`-12.05`).
fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// A random person: (display name, email local part).
fn person(rng: &mut StdRng, chinese: bool) -> (String, String) {
    if chinese {
        let (s, sp) = pick2(rng, CN_SURNAMES);
        let (g, gp) = pick2(rng, CN_GIVEN);
        (format!("{s}{g}"), format!("{sp}.{gp}"))
    } else {
        let (f, l) = (pick(rng, EN_FIRST), pick(rng, EN_LAST));
        (format!("{f} {l}"), format!("{f}.{l}").to_lowercase())
    }
}

/// A CSV file written row by row, remembering its path for error reports.
struct Sink {
    path: PathBuf,
    writer: csv::Writer<File>,
}

impl Sink {
    /// Creates the file and writes the comma-separated `header`.
    fn create(dir: &Path, name: &str, header: &str) -> Result<Self, DemoError> {
        let path = dir.join(name);
        let file = File::create(&path).map_err(io_err(&path))?;
        let mut sink = Self {
            writer: csv::Writer::from_writer(file),
            path,
        };
        sink.row(header.split(','))?;
        Ok(sink)
    }

    fn row<I: IntoIterator<Item = T>, T: AsRef<[u8]>>(&mut self, row: I) -> Result<(), DemoError> {
        self.writer.write_record(row).map_err(csv_err(&self.path))
    }

    fn finish(mut self) -> Result<PathBuf, DemoError> {
        self.writer.flush().map_err(io_err(&self.path))?;
        Ok(self.path)
    }
}

/// Maps a distribution-parameter error; parameters are constants, so this is unreachable.
fn dist_err(e: impl std::fmt::Display) -> DemoError {
    DemoError::InvalidSpec(format!("distribution: {e}"))
}

/// Generates the five demo CSV files into `dir` (created if missing).
///
/// Output depends only on `spec`. Rows are streamed, so memory does not grow
/// with the number of orders (only a counter per distinct company base name is kept).
pub fn generate(dir: &Path, spec: &DemoSpec) -> Result<DemoFiles, DemoError> {
    if spec.customers == 0 || spec.owners == 0 || spec.history_months == 0 {
        return Err(DemoError::InvalidSpec(
            "customers, owners and history_months must all be > 0".into(),
        ));
    }
    let months = Months::new(spec.history_months);
    let start = spec.as_of.checked_sub_months(months);
    // Due/paid dates reach up to ~240 days past an order; keep them representable.
    let (Some(window_start), Some(_)) = (start, spec.as_of.checked_add_days(Days::new(400))) else {
        let msg = format!("as_of {} out of range", spec.as_of);
        return Err(DemoError::InvalidSpec(msg));
    };
    // Day offsets 1..=total map to dates in (window_start, as_of].
    let total = (spec.as_of - window_start).num_days().max(1) as u64;
    let day = |d: u64| window_start + Days::new(d);
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    // Shape < 1: many occasional buyers, a few very frequent ones; mean 1 order/month.
    let rate_dist = Gamma::<f64>::new(0.6, 1.0 / 0.6).map_err(dist_err)?;
    // Mean ~6% dropout per purchase: a visible share churns within the window.
    let dropout_dist = Beta::<f64>::new(1.0, 16.0).map_err(dist_err)?;
    // Per-customer median ticket ~3,000 CNY with a long tail, plus per-order noise.
    let ticket_dist = LogNormal::new(3000f64.ln(), 0.9).map_err(dist_err)?;
    let jitter_dist = LogNormal::new(0.0, 0.35).map_err(dist_err)?;
    let nps_dist = Beta::<f64>::new(4.0, 2.0).map_err(dist_err)?;
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut counts = DemoCounts::default();

    let mut owners = Sink::create(dir, "owners.csv", OWNERS_HEADER)?;
    let mut owner_emails = Vec::with_capacity(spec.owners);
    for i in 0..spec.owners {
        let (name, local) = match nth(OWNERS, i).and_then(|o| o.split_once(':')) {
            Some((n, l)) => (n.to_string(), l.to_string()),
            None => {
                let (n, l) = person(&mut rng, i % 2 == 0);
                // The numeric suffix keeps composed owners' emails unique.
                (n, format!("{l}{}", i + 1))
            }
        };
        let locale = if name.is_ascii() { "en" } else { "zh-CN" };
        let email = format!("{local}@demo.tierwise.example");
        owners.row([email.as_str(), &name, locale, &format!("U{:03}", i + 1)])?;
        owner_emails.push(email);
        counts.owners += 1;
    }

    let mut customers = Sink::create(dir, "customers.csv", CUSTOMERS_HEADER)?;
    let mut orders = Sink::create(dir, "orders.csv", ORDERS_HEADER)?;
    let mut invoices = Sink::create(dir, "invoices.csv", INVOICES_HEADER)?;
    let mut activities = Sink::create(dir, "activities.csv", ACTIVITIES_HEADER)?;
    // Keyed lookups only (never iterated), so HashMap order cannot leak into output.
    let mut name_uses: HashMap<String, u32> = HashMap::new();

    for idx in 1..=spec.customers {
        let cid = format!("C{idx:06}");
        let owner = rng.random_range(0..spec.owners);
        let chinese = rng.random_bool(0.7);
        let (base, slug) = if chinese {
            let ((c, cp), (w, wp)) = (pick2(&mut rng, CITIES), pick2(&mut rng, CN_WORDS));
            let (ind, ip) = pick2(&mut rng, CN_INDUSTRIES);
            let slug = format!("{wp}-{ip}-{cp}.example.cn");
            (format!("{c}{w}{ind}有限公司"), slug)
        } else {
            let (w, ind) = (pick(&mut rng, EN_WORDS), pick(&mut rng, EN_INDUSTRIES));
            let slug = format!("{w}-{ind}.example.com").replace(' ', "");
            let slug = slug.to_lowercase();
            (format!("{w} {ind} {}", pick(&mut rng, EN_SUFFIXES)), slug)
        };
        let uses = name_uses.entry(base.clone()).or_insert(0);
        *uses += 1;
        let (name, domain) = match *uses {
            1 => (base, slug),
            n => (format!("{base} {n}"), format!("{n}.{slug}")),
        };
        // Contacts mostly match the company's language, with some cross-over.
        let chinese_contact = rng.random_bool(if chinese { 0.95 } else { 0.2 });
        let (contact, local) = person(&mut rng, chinese_contact);
        let (p1, p2) = (rng.random_range(0..10_000), rng.random_range(0..10_000));
        let phone = format!("+86 {} {p1:04} {p2:04}", pick(&mut rng, PHONE_PREFIXES));

        let prospect = rng.random_bool(0.05);
        // A third are established accounts active since the window opened; the rest join over time.
        let span = if rng.random_bool(0.35) { 90 } else { total };
        let first = rng.random_range(1..=span.min(total));
        let rate = rate_dist.sample(&mut rng).clamp(0.03, 12.0);
        let dropout = dropout_dist.sample(&mut rng);
        let ticket = ticket_dist.sample(&mut rng);
        let margin: f64 = rng.random_range(0.15..0.45);
        // Payment class: 0..80 punctual, 80..95 sometimes late, 95..100 bad.
        let payer = rng.random_range(0..100u8);

        // Ratings come from lead scoring, so they exist mostly for recent accounts.
        let rating_p = match (prospect, total - first < 183) {
            (true, _) => 0.8,
            (false, true) => 0.75,
            (false, false) => 0.25,
        };
        let rating = rng.random_bool(rating_p).then(|| {
            let z = (ticket / 3000.0).ln() + rng.random_range(-1.2..1.2);
            ((3.0 + z).round().clamp(1.0, 5.0) as u8).to_string()
        });
        // Bad payers tend to be unhappy customers too.
        let nps = rng.random_bool(0.4).then(|| {
            let penalty = if payer >= 95 { 40.0 } else { 0.0 };
            let v = nps_dist.sample(&mut rng) * 200.0 - 100.0 - penalty;
            (v.round().clamp(-100.0, 100.0) as i64).to_string()
        });
        let (rating, nps) = (rating.unwrap_or_default(), nps.unwrap_or_default());
        let email = format!("{local}@{domain}");
        let created = day(first).to_string();
        let rep = owner_emails[owner].as_str();
        customers.row([
            &cid, &name, &contact, &email, &phone, rep, &created, &rating, &nps,
        ])?;
        counts.customers += 1;

        // Orders: a Poisson process from the first order on, with dropout after each purchase.
        let (mut alive, mut last, mut n_orders) = (true, first, 0u64);
        let mut t = first as f64;
        while !prospect && (t as u64) <= total {
            let d = t as u64;
            let cents = ((ticket * jitter_dist.sample(&mut rng) * 100.0).round() as i64).max(100);
            let margin = (margin + rng.random_range(-0.03..0.03)).clamp(0.15, 0.45);
            let refund = n_orders > 0 && rng.random_bool(0.01);
            let amount = match refund {
                true => -((cents as f64 * rng.random_range(0.2..1.0)) as i64).max(100),
                false => cents,
            };
            let cost = (amount as f64 * (1.0 - margin)).round() as i64;
            counts.orders += 1;
            n_orders += 1;
            let oid = format!("O{:07}", counts.orders);
            let (date, amount) = (day(d).to_string(), money(amount));
            orders.row([&oid, &cid, &date, &amount, &money(cost), "CNY"])?;
            if !refund {
                let paid_after = match payer {
                    0..80 => Some(rng.random_range(0..=30)),
                    80..95 if rng.random_bool(0.35) => Some(30 + rng.random_range(1..=60)),
                    80..95 => Some(rng.random_range(0..=30)),
                    _ if rng.random_bool(0.1) => None,
                    _ => Some(30 + rng.random_range(15..=150)),
                };
                // Payments after as_of have not happened yet: leave them open.
                let paid = paid_after.filter(|p| d + p <= total);
                let paid = paid.map(|p| day(d + p).to_string());
                counts.invoices += 1;
                let (iid, due) = (format!("I{:07}", counts.invoices), day(d + 30).to_string());
                let paid = paid.as_deref().unwrap_or("");
                invoices.row([&iid, &cid, &oid, &date, &due, &amount, paid, "CNY"])?;
            }
            last = d;
            if rng.random_bool(dropout) {
                alive = false;
                break;
            }
            t += rng.sample::<f64, _>(Exp1) * DAYS_PER_MONTH / rate;
        }

        // Activities: another Poisson process; bigger/more frequent buyers get more attention,
        // and reps stop calling ~3 months after a churned customer's last order.
        let size = (ticket / 3000.0).ln().max(0.0);
        let (from, to, per_month) = match (prospect, alive) {
            (true, _) => (first, total, 0.5),
            (false, true) => (first.saturating_sub(30).max(1), total, 0.0),
            (false, false) => (first.saturating_sub(30).max(1), total.min(last + 90), 0.0),
        };
        let per_month = per_month + 0.2 + 0.3 * rate.min(6.0) + 0.25 * size;
        let mut t = from as f64;
        loop {
            t += rng.sample::<f64, _>(Exp1) * DAYS_PER_MONTH / per_month;
            if t as u64 > to {
                break;
            }
            // The fractional day maps onto office hours, so activities stay time-ordered.
            let minute = 9 * 60 + ((t.fract() * 108.0) as u32) * 5;
            let (h, m) = (minute / 60, minute % 60);
            let at = format!("{}T{h:02}:{m:02}:00Z", day(t as u64));
            // Mostly the account owner; sometimes a colleague covers.
            let other = rng.random_range(0..spec.owners);
            let rep = if rng.random_bool(0.9) { owner } else { other };
            counts.activities += 1;
            let aid = format!("A{:07}", counts.activities);
            let (kind, note) = (pick(&mut rng, KINDS), pick(&mut rng, NOTES));
            let rep = owner_emails[rep].as_str();
            activities.row([&aid, &cid, kind, &at, rep, note])?;
        }
    }

    Ok(DemoFiles {
        owners: owners.finish()?,
        customers: customers.finish()?,
        orders: orders.finish()?,
        invoices: invoices.finish()?,
        activities: activities.finish()?,
        counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::sync::atomic::{AtomicUsize, Ordering};

    const FILES: &str = "owners customers orders invoices activities";

    /// Unique scratch dir per call, so parallel tests never share files.
    fn temp_dir(tag: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!("tierwise-demo-{tag}-{}-{n}", std::process::id()))
    }

    fn rows(path: &Path) -> Vec<csv::StringRecord> {
        let mut r = csv::Reader::from_path(path).unwrap();
        r.records().map(Result::unwrap).collect()
    }

    fn run(tag: &str, seed: u64) -> (PathBuf, Vec<Vec<u8>>) {
        let (dir, mut spec) = (temp_dir(tag), DemoSpec::default());
        (spec.seed, spec.customers) = (seed, 300);
        generate(&dir, &spec).unwrap();
        let read = |f| std::fs::read(dir.join(format!("{f}.csv"))).unwrap();
        let files = FILES.split(' ').map(read).collect();
        (dir, files)
    }

    #[test]
    fn deterministic_per_seed() {
        let ((a, fa), (b, fb), (c, fc)) = (run("a", 7), run("b", 7), run("c", 8));
        assert_eq!(fa, fb, "same seed, same bytes");
        assert_ne!(fa[2], fc[2], "another seed, other orders");
        for d in [a, b, c] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn rejects_empty_specs() {
        let dir = temp_dir("invalid");
        let mut specs = [(); 3].map(|()| DemoSpec::default());
        (specs[0].customers, specs[1].owners, specs[2].history_months) = (0, 0, 0);
        for spec in specs {
            let res = generate(&dir, &spec);
            assert!(matches!(res, Err(DemoError::InvalidSpec(_))), "{spec:?}");
        }
        assert!(!dir.exists(), "nothing written for an invalid spec");
    }

    #[test]
    fn default_spec_is_consistent_and_realistic() {
        let (dir, spec) = (temp_dir("full"), DemoSpec::default());
        let files = generate(&dir, &spec).unwrap();
        // Literal headers (not the module's constants) so a drift in either is caught.
        let headers = [
            "email,name,locale,owner_id",
            "customer_id,name,contact_name,contact_email,contact_phone,owner_email,\
             created_date,prospect_rating,nps",
            "order_id,customer_id,order_date,amount,cost,currency",
            "invoice_id,customer_id,order_id,issued_date,due_date,amount,paid_date,currency",
            "activity_id,customer_id,kind,occurred_at,owner_email,note",
        ];
        for (name, header) in FILES.split(' ').zip(headers) {
            let text = std::fs::read_to_string(dir.join(format!("{name}.csv"))).unwrap();
            assert_eq!(text.lines().next(), Some(header));
        }
        let owners = rows(&files.owners);
        let customers = rows(&files.customers);
        let (orders, invoices) = (rows(&files.orders), rows(&files.invoices));
        let activities = rows(&files.activities);
        let c = files.counts;
        let lens = [&owners, &customers, &orders, &invoices, &activities].map(|r| r.len() as u64);
        assert_eq!(
            lens,
            [c.owners, c.customers, c.orders, c.invoices, c.activities]
        );
        assert_eq!((c.owners, c.customers), (8, 2000));

        let owner_emails: HashSet<&str> = owners.iter().map(|r| &r[0]).collect();
        let ids: HashSet<&str> = customers.iter().map(|r| &r[0]).collect();
        let names: HashSet<&str> = customers.iter().map(|r| &r[1]).collect();
        assert_eq!(names.len(), customers.len(), "company names are unique");
        assert!(customers.iter().all(|r| owner_emails.contains(&r[5])));
        let start = spec.as_of.checked_sub_months(Months::new(36)).unwrap();
        let date = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let in_window = |d: NaiveDate| d > start && d <= spec.as_of;
        let two_places = |s: &str| {
            let (int, frac) = s.strip_prefix('-').unwrap_or(s).split_once('.').unwrap();
            let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
            digits(int) && digits(frac) && frac.len() == 2
        };

        let mut revenue: HashMap<&str, f64> = HashMap::new();
        let mut n_orders: HashMap<&str, usize> = HashMap::new();
        let mut last: HashMap<&str, NaiveDate> = HashMap::new();
        let mut positive = 0;
        for r in &orders {
            assert!(ids.contains(&r[1]), "order customer exists");
            let d = date(&r[2]);
            assert!(
                in_window(d) && two_places(&r[3]) && two_places(&r[4]),
                "{r:?}"
            );
            let (amount, cost): (f64, f64) = (r[3].parse().unwrap(), r[4].parse().unwrap());
            assert!(
                (amount > 0.0) == (cost > 0.0) && cost.abs() < amount.abs(),
                "{r:?}"
            );
            positive += usize::from(amount > 0.0);
            *revenue.entry(&r[1]).or_default() += amount;
            *n_orders.entry(&r[1]).or_default() += 1;
            let l = last.entry(&r[1]).or_insert(d);
            *l = (*l).max(d);
        }
        assert_eq!(positive, invoices.len(), "one invoice per positive order");
        assert!(positive < orders.len(), "some refunds exist");
        let mut paid = 0;
        for r in &invoices {
            let issued = date(&r[3]);
            assert!(in_window(issued) && two_places(&r[5]));
            assert_eq!(date(&r[4]), issued + Days::new(30));
            if !r[6].is_empty() {
                let p = date(&r[6]);
                assert!(p >= issued && p <= spec.as_of, "{r:?}");
                paid += 1;
            }
        }
        assert!(paid > invoices.len() * 8 / 10 && paid < invoices.len());
        for r in &activities {
            assert!(ids.contains(&r[1]) && owner_emails.contains(&r[4]));
            assert!(["call", "visit", "email", "meeting"].contains(&&r[2]));
            let at = chrono::DateTime::parse_from_rfc3339(&r[3]).unwrap();
            assert!(at.date_naive() <= spec.as_of && r[3].ends_with('Z'));
        }

        let mut rev: Vec<f64> = revenue.values().copied().collect();
        rev.sort_by(|a, b| b.total_cmp(a));
        let top = rev[..rev.len().div_ceil(5)].iter().sum::<f64>();
        let share = top / rev.iter().sum::<f64>();
        assert!(
            (0.55..=0.95).contains(&share),
            "top-20% revenue share {share}"
        );
        let recent = spec.as_of.checked_sub_months(Months::new(12)).unwrap();
        let churned = last.values().filter(|d| **d <= recent).count();
        assert!(churned > 100, "churned-looking customers: {churned}");
        let heavy = n_orders.values().filter(|n| **n >= 5).count();
        assert!(heavy > 100, "customers with >= 5 orders: {heavy}");
        let prospects = customers.len() - n_orders.len();
        assert!((40..200).contains(&prospects), "prospects: {prospects}");
        let rated = customers.iter().filter(|r| !r[7].is_empty()).count();
        let nps = customers.iter().filter(|r| !r[8].is_empty()).count();
        assert!((400..800).contains(&rated) && (600..1000).contains(&nps));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
