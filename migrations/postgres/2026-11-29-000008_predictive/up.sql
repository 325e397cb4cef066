-- Predictive models (BG/NBD or MBG/NBD and Gamma-Gamma): what each run fitted, and each
-- customer's predictions. NULL where a customer has no order up to the period's end or the
-- model could not be fitted (the run's predictive_error says why).
ALTER TABLE grading_runs ADD COLUMN predictive TEXT;
ALTER TABLE grading_runs ADD COLUMN predictive_error TEXT;
ALTER TABLE grades ADD COLUMN p_alive DOUBLE PRECISION;
ALTER TABLE grades ADD COLUMN expected_purchases_90d DOUBLE PRECISION;
ALTER TABLE grades ADD COLUMN expected_purchases_12m DOUBLE PRECISION;
ALTER TABLE grades ADD COLUMN expected_order_value BIGINT;
ALTER TABLE grades ADD COLUMN clv_model BIGINT;
