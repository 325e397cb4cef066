DROP TABLE crm_sync_state;
