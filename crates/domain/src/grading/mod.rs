//! The grading model (the contract in `docs/grading-model.md`): RFM scores and segments, ABC
//! classes, credit, profit, the composite score and tiers, hysteresis and overrides, loyalty,
//! lifecycle and simple CLV — pure functions over per-customer facts.

pub mod adjust;
pub mod engine;
pub mod facts;
pub mod policy;
pub mod predict;
pub mod rank;
pub mod score;
pub mod segment;
pub mod summary;

pub use adjust::{PolicyAdjustment, TierCut};
pub use engine::{
    AbcClass, BUILTIN_COMPONENTS, Grade, GradingOutcome, OverrideNote, TierReason, grade_population,
};
pub use facts::{
    CustomerFacts, InvoiceFacts, Override, OverrideKind, PreviousGrade, ProfitFacts, YearAgoGrade,
};
pub use policy::Policy;
pub use predict::{
    Prediction, PredictionInputs, Predictions, PredictiveModel, PredictivePolicy, TimeUnit,
    predict_population,
};
pub use score::{Credit, CreditGrade, Lifecycle};
pub use segment::SegmentTable;
pub use summary::{Summary, summarise};
