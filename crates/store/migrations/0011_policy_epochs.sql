-- A counter per company that every change to what a request's security
-- checks read moves on: users, departments, access hours, IP rules, roles,
-- pledge and training, record types and fields, company keys and
-- settings. Triggers move it in the same transaction as the change, so a
-- node that caches those checks' inputs (keyed by the counter it read
-- with the session) sees any committed change, made by any node or tool,
-- on the next request.
CREATE TABLE policy_epochs (
  company_id BIGINT PRIMARY KEY,
  epoch BIGINT NOT NULL
);
{policy_epoch_triggers}
