ALTER TABLE grades DROP COLUMN clv_model;
ALTER TABLE grades DROP COLUMN expected_order_value;
ALTER TABLE grades DROP COLUMN expected_purchases_12m;
ALTER TABLE grades DROP COLUMN expected_purchases_90d;
ALTER TABLE grades DROP COLUMN p_alive;
ALTER TABLE grading_runs DROP COLUMN predictive_error;
ALTER TABLE grading_runs DROP COLUMN predictive;
