-- A found block's life (issue 16): `status` follows it from the find to
-- maturity: pending (no node has taken it yet), accepted (on the best
-- chain), confirmed (100 confirmations: `confirmed` is true from then on,
-- as the plan's column means), orphaned (accepted, then another block at
-- its height won), stale (never accepted; the chain passed it) or rejected
-- (never accepted; a node refused the block itself).
-- Rows written before this migration used `confirmed` for "a node accepted
-- it": their status says so, and `confirmed` keeps its old value.
ALTER TABLE blocks
    ADD COLUMN status text NOT NULL DEFAULT 'pending',
    ADD COLUMN confirmations bigint,
    ADD COLUMN replaced_by text,
    ADD COLUMN settled_at timestamptz;
UPDATE blocks SET status = CASE
    WHEN confirmed THEN 'accepted'
    WHEN submitted_at IS NOT NULL THEN 'rejected'
    ELSE 'pending' END;
CREATE INDEX blocks_unsettled ON blocks (status) WHERE status IN ('pending', 'accepted');
