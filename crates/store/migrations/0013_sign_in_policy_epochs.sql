-- The sign-in policy (lockout, throttling, second factor) and the password
-- rules, the company's and each user's own, move the company's policy
-- epoch too, so a node may cache them for sign-in under the epoch it read
-- with the account.
{sign_in_policy_epoch_triggers}
