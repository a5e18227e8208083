"""The PostgreSQL ledger's schema: tables and server-side functions, by version.

Every ledger operation is one call of one plpgsql function below, so it is
one statement, one transaction and one round trip. ``__schema__`` stands for
the ledger's schema (a quoted identifier) and is replaced before the script
runs. Each entry of ``MIGRATIONS`` upgrades the schema from version ``index``
to ``index + 1``; append, never edit one that has shipped.

Locking, which keeps concurrent operations free of deadlocks: an operation
locks the reservation rows it needs first (its own id; expired ones in
``(expires_at, id)`` order), then the counter rows of every key it changes,
all at once and in one global order (``budgetguard_lock``, keys sorted in
byte order), and only then reads and writes them. A check therefore reads a
counter that nobody else can change until the transaction ends.

Time: every function takes ``p_now`` (seconds since the epoch); ``NULL``
means the server's clock (``clock_timestamp()``), so hosts whose clocks
disagree still agree on expiry.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "TOMBSTONE_TTL"]

#: Seconds a deleted budget's tombstone is kept for ``budget_changes`` (at least a day).
TOMBSTONE_TTL = 86400.0

_V1 = r"""
CREATE TABLE __schema__.budgetguard_counters (
    key text COLLATE "C" PRIMARY KEY,
    spent bigint NOT NULL DEFAULT 0,
    reserved bigint NOT NULL DEFAULT 0
);

-- One row per reservation id ever used (until pruned): state 0 open,
-- 1 settled, 2 released or expired. A unique id per row is what makes a
-- late reserve, a repeated settle and a release that overtakes its
-- reserve all idempotent.
CREATE TABLE __schema__.budgetguard_reservations (
    id text COLLATE "C" PRIMARY KEY,
    state smallint NOT NULL,
    keys text[] NOT NULL,
    limits bigint[] NOT NULL,
    amounts bigint[] NOT NULL,
    expires_at double precision NOT NULL,
    ended_at double precision
);
CREATE INDEX budgetguard_reservations_open
    ON __schema__.budgetguard_reservations (expires_at, id) WHERE state = 0;
CREATE INDEX budgetguard_reservations_ended
    ON __schema__.budgetguard_reservations (ended_at) WHERE state <> 0;

-- Op ids of add(op_id=...), so that a retried charge counts once.
CREATE TABLE __schema__.budgetguard_added (
    id text COLLATE "C" PRIMARY KEY,
    at double precision NOT NULL
);
CREATE INDEX budgetguard_added_at ON __schema__.budgetguard_added (at);

-- Budget definitions; a NULL definition is a tombstone of a deleted one.
CREATE TABLE __schema__.budgetguard_budgets (
    name text COLLATE "C" PRIMARY KEY,
    definition text,
    version bigint NOT NULL,
    changed_at double precision NOT NULL
);
CREATE INDEX budgetguard_budgets_version ON __schema__.budgetguard_budgets (version);
CREATE INDEX budgetguard_budgets_tombstones
    ON __schema__.budgetguard_budgets (changed_at) WHERE definition IS NULL;

-- mark: a random id written with the first definition ever stored;
-- version: bumped by every put and delete; forgotten: the highest version
-- of a tombstone pruned (a reader older than it must reload everything).
CREATE TABLE __schema__.budgetguard_budget_log (
    id int PRIMARY KEY CHECK (id = 1),
    mark text,
    version bigint NOT NULL,
    forgotten bigint NOT NULL
);
INSERT INTO __schema__.budgetguard_budget_log VALUES (1, NULL, 0, 0);

CREATE FUNCTION __schema__.budgetguard_now(p_now double precision)
RETURNS double precision LANGUAGE sql VOLATILE AS $$
    SELECT coalesce(p_now, extract(epoch FROM clock_timestamp())::double precision)
$$;

-- Lock the counter row of every key (creating missing ones), in byte order.
CREATE FUNCTION __schema__.budgetguard_lock(p_keys text[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    k text;
BEGIN
    FOR k IN SELECT DISTINCT u COLLATE "C" FROM unnest(p_keys) AS u ORDER BY 1 LOOP
        LOOP
            PERFORM 1 FROM __schema__.budgetguard_counters c WHERE c.key = k FOR UPDATE;
            EXIT WHEN FOUND;
            INSERT INTO __schema__.budgetguard_counters (key) VALUES (k) ON CONFLICT DO NOTHING;
        END LOOP;
    END LOOP;
END
$$;

-- Add amounts to (sign 1) or drop them from (sign -1) the reserved units; rows locked.
CREATE FUNCTION __schema__.budgetguard_hold(p_keys text[], p_amounts bigint[], p_sign int)
RETURNS void LANGUAGE sql AS $$
    UPDATE __schema__.budgetguard_counters c
    SET reserved = greatest(c.reserved + p_sign * d.total, 0)
    FROM (SELECT h.k, sum(h.a) AS total FROM unnest(p_keys, p_amounts) AS h(k, a) GROUP BY h.k) d
    WHERE c.key = d.k
$$;

-- Charge amount once per mention of a key; rows locked.
CREATE FUNCTION __schema__.budgetguard_charge(p_keys text[], p_amount bigint)
RETURNS void LANGUAGE sql AS $$
    UPDATE __schema__.budgetguard_counters c
    SET spent = c.spent + d.n * p_amount
    FROM (SELECT u AS k, count(*) AS n FROM unnest(p_keys) AS u GROUP BY u) d
    WHERE c.key = d.k
$$;

-- End every open reservation past its expiry (but p_keep), and lock the
-- counters of their keys together with p_also's, in one order.
CREATE FUNCTION __schema__.budgetguard_expire(
    p_now double precision, p_also text[], p_keep text
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    due_keys text[];
    due_amounts bigint[];
BEGIN
    WITH due AS (
        UPDATE __schema__.budgetguard_reservations r SET state = 2, ended_at = p_now
        WHERE r.id IN (
            SELECT o.id FROM __schema__.budgetguard_reservations o
            WHERE o.state = 0 AND o.expires_at <= p_now AND o.id IS DISTINCT FROM p_keep
            ORDER BY o.expires_at, o.id FOR UPDATE)
        RETURNING r.keys, r.amounts)
    SELECT array_agg(h.k), array_agg(h.a) INTO due_keys, due_amounts
    FROM due, unnest(due.keys, due.amounts) AS h(k, a);
    PERFORM __schema__.budgetguard_lock(coalesce(due_keys, '{}') || p_also);
    IF due_keys IS NOT NULL THEN
        PERFORM __schema__.budgetguard_hold(due_keys, due_amounts, -1);
    END IF;
END
$$;

-- Forget ended reservation ids and add op ids older than the idempotency
-- TTL: a few per call, so the work of one call stays bounded.
CREATE FUNCTION __schema__.budgetguard_prune(p_now double precision, p_ttl double precision)
RETURNS void LANGUAGE sql AS $$
    DELETE FROM __schema__.budgetguard_reservations WHERE id IN (
        SELECT o.id FROM __schema__.budgetguard_reservations o
        WHERE o.state <> 0 AND o.ended_at < p_now - p_ttl
        ORDER BY o.ended_at LIMIT 20 FOR UPDATE SKIP LOCKED);
    DELETE FROM __schema__.budgetguard_added WHERE id IN (
        SELECT o.id FROM __schema__.budgetguard_added o
        WHERE o.at < p_now - p_ttl ORDER BY o.at LIMIT 20 FOR UPDATE SKIP LOCKED);
$$;

-- status -1: the id was used before; 0: held; 1: refused at hold o_index.
CREATE FUNCTION __schema__.budgetguard_reserve(
    p_id text, p_keys text[], p_limits bigint[], p_amounts bigint[],
    p_expires double precision, p_now double precision, p_ttl double precision,
    OUT o_status int, OUT o_index int, OUT o_spent bigint, OUT o_reserved bigint
) LANGUAGE plpgsql AS $$
DECLARE
    now double precision := __schema__.budgetguard_now(p_now);
    spent_now bigint;
    reserved_now bigint;
BEGIN
    INSERT INTO __schema__.budgetguard_reservations (id, state, keys, limits, amounts, expires_at)
    VALUES (p_id, 0, p_keys, p_limits, p_amounts, p_expires) ON CONFLICT (id) DO NOTHING;
    IF NOT FOUND THEN
        o_status := -1;
        RETURN;
    END IF;
    PERFORM __schema__.budgetguard_expire(now, p_keys, p_id);
    -- Every hold is checked against the balances before this reservation.
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        CONTINUE WHEN p_limits[i] IS NULL;
        SELECT c.spent, c.reserved INTO spent_now, reserved_now
        FROM __schema__.budgetguard_counters c WHERE c.key = p_keys[i];
        IF spent_now::numeric + reserved_now + p_amounts[i] > p_limits[i]
           OR (p_amounts[i] = 0 AND spent_now::numeric + reserved_now >= p_limits[i]) THEN
            -- A refusal changes nothing: the id stays unused.
            DELETE FROM __schema__.budgetguard_reservations WHERE id = p_id;
            DELETE FROM __schema__.budgetguard_counters c
            WHERE c.key = ANY (p_keys) AND c.spent = 0 AND c.reserved = 0;
            o_status := 1;
            o_index := i - 1;
            o_spent := spent_now;
            o_reserved := reserved_now;
            RETURN;
        END IF;
    END LOOP;
    PERFORM __schema__.budgetguard_hold(p_keys, p_amounts, 1);
    PERFORM __schema__.budgetguard_prune(now, p_ttl);
    o_status := 0;
END
$$;

-- True if this call charged; false if the id was settled before.
CREATE FUNCTION __schema__.budgetguard_settle(
    p_id text, p_keys text[], p_amount bigint, p_now double precision
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    now double precision := __schema__.budgetguard_now(p_now);
    old_state smallint;
    held_keys text[];
    held_amounts bigint[];
BEGIN
    LOOP
        SELECT r.state, r.keys, r.amounts INTO old_state, held_keys, held_amounts
        FROM __schema__.budgetguard_reservations r WHERE r.id = p_id FOR UPDATE;
        EXIT WHEN FOUND;
        INSERT INTO __schema__.budgetguard_reservations
            (id, state, keys, limits, amounts, expires_at, ended_at)
        VALUES (p_id, 1, '{}', '{}', '{}', now, now) ON CONFLICT (id) DO NOTHING;
        IF FOUND THEN  -- never reserved here: the money was still spent
            old_state := NULL;
            EXIT;
        END IF;
    END LOOP;
    IF old_state = 1 THEN
        RETURN false;
    END IF;
    IF old_state IS NOT NULL THEN
        UPDATE __schema__.budgetguard_reservations SET state = 1, ended_at = now WHERE id = p_id;
    END IF;
    IF old_state IS DISTINCT FROM 0 THEN  -- released or expired: holds already dropped
        held_keys := '{}';
        held_amounts := '{}';
    END IF;
    IF p_amount = 0 THEN
        p_keys := '{}';
    END IF;
    PERFORM __schema__.budgetguard_lock(held_keys || p_keys);
    PERFORM __schema__.budgetguard_hold(held_keys, held_amounts, -1);
    PERFORM __schema__.budgetguard_charge(p_keys, p_amount);
    RETURN true;
END
$$;

-- True if this call dropped the holds; false if the id had ended (or never
-- existed: it is then marked used, so a reserve arriving late holds nothing).
CREATE FUNCTION __schema__.budgetguard_release(p_id text, p_now double precision)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    now double precision := __schema__.budgetguard_now(p_now);
    old_state smallint;
    held_keys text[];
    held_amounts bigint[];
BEGIN
    LOOP
        SELECT r.state, r.keys, r.amounts INTO old_state, held_keys, held_amounts
        FROM __schema__.budgetguard_reservations r WHERE r.id = p_id FOR UPDATE;
        EXIT WHEN FOUND;
        INSERT INTO __schema__.budgetguard_reservations
            (id, state, keys, limits, amounts, expires_at, ended_at)
        VALUES (p_id, 2, '{}', '{}', '{}', now, now) ON CONFLICT (id) DO NOTHING;
        IF FOUND THEN
            RETURN false;
        END IF;
    END LOOP;
    IF old_state <> 0 THEN
        RETURN false;
    END IF;
    UPDATE __schema__.budgetguard_reservations SET state = 2, ended_at = now WHERE id = p_id;
    PERFORM __schema__.budgetguard_lock(held_keys);
    PERFORM __schema__.budgetguard_hold(held_keys, held_amounts, -1);
    RETURN true;
END
$$;

-- True if this call charged; false if op_id charged before.
CREATE FUNCTION __schema__.budgetguard_add(
    p_keys text[], p_amount bigint, p_op text, p_now double precision, p_ttl double precision
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    now double precision := __schema__.budgetguard_now(p_now);
BEGIN
    IF p_op IS NOT NULL THEN
        INSERT INTO __schema__.budgetguard_added (id, at) VALUES (p_op, now)
        ON CONFLICT (id) DO NOTHING;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
        PERFORM __schema__.budgetguard_prune(now, p_ttl);
    END IF;
    IF p_amount > 0 AND cardinality(p_keys) > 0 THEN
        PERFORM __schema__.budgetguard_lock(p_keys);
        PERFORM __schema__.budgetguard_charge(p_keys, p_amount);
    END IF;
    RETURN true;
END
$$;

CREATE FUNCTION __schema__.budgetguard_balances(p_keys text[], p_now double precision)
RETURNS TABLE (o_spent bigint, o_reserved bigint) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM __schema__.budgetguard_expire(__schema__.budgetguard_now(p_now), '{}', NULL);
    RETURN QUERY
        SELECT coalesce(c.spent, 0), coalesce(c.reserved, 0)
        FROM unnest(p_keys) WITH ORDINALITY AS u(k, n)
        LEFT JOIN __schema__.budgetguard_counters c ON c.key = u.k
        ORDER BY u.n;
END
$$;

CREATE FUNCTION __schema__.budgetguard_scan(p_prefix text, p_now double precision)
RETURNS TABLE (o_key text, o_spent bigint, o_reserved bigint) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM __schema__.budgetguard_expire(__schema__.budgetguard_now(p_now), '{}', NULL);
    RETURN QUERY
        SELECT c.key::text, c.spent, c.reserved FROM __schema__.budgetguard_counters c
        WHERE c.key >= p_prefix AND starts_with(c.key, p_prefix)
          AND (c.spent <> 0 OR c.reserved <> 0)
        ORDER BY c.key;
END
$$;

CREATE FUNCTION __schema__.budgetguard_open(p_now double precision)
RETURNS TABLE (
    o_id text, o_keys text[], o_limits bigint[], o_amounts bigint[], o_expires double precision
) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM __schema__.budgetguard_expire(__schema__.budgetguard_now(p_now), '{}', NULL);
    RETURN QUERY
        SELECT r.id::text, r.keys, r.limits, r.amounts, r.expires_at
        FROM __schema__.budgetguard_reservations r WHERE r.state = 0
        ORDER BY r.expires_at, r.id;
END
$$;

CREATE FUNCTION __schema__.budgetguard_clear(p_keys text[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM __schema__.budgetguard_lock(p_keys);
    UPDATE __schema__.budgetguard_counters c SET spent = 0 WHERE c.key = ANY (p_keys);
    DELETE FROM __schema__.budgetguard_counters c
    WHERE c.key = ANY (p_keys) AND c.spent = 0 AND c.reserved = 0;
END
$$;

-- Drop tombstones older than a day, a few per call; remember the newest dropped.
CREATE FUNCTION __schema__.budgetguard_forget(p_now double precision)
RETURNS void LANGUAGE sql AS $$
    WITH gone AS (
        DELETE FROM __schema__.budgetguard_budgets WHERE name IN (
            SELECT b.name FROM __schema__.budgetguard_budgets b
            WHERE b.definition IS NULL AND b.changed_at < p_now - 86400
            ORDER BY b.changed_at LIMIT 100)
        RETURNING version)
    UPDATE __schema__.budgetguard_budget_log
    SET forgotten = greatest(forgotten, (SELECT coalesce(max(version), 0) FROM gone))
    WHERE id = 1
$$;

CREATE FUNCTION __schema__.budgetguard_put_budget(
    p_name text, p_definition text, p_mark text, p_now double precision
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    now double precision := __schema__.budgetguard_now(p_now);
    v bigint;
BEGIN
    UPDATE __schema__.budgetguard_budget_log
    SET version = version + 1, mark = coalesce(mark, p_mark)
    WHERE id = 1 RETURNING version INTO v;
    INSERT INTO __schema__.budgetguard_budgets (name, definition, version, changed_at)
    VALUES (p_name, p_definition, v, now)
    ON CONFLICT (name) DO UPDATE SET definition = excluded.definition,
        version = excluded.version, changed_at = excluded.changed_at;
    PERFORM __schema__.budgetguard_forget(now);
    RETURN v;
END
$$;

CREATE FUNCTION __schema__.budgetguard_delete_budget(p_name text, p_now double precision)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    now double precision := __schema__.budgetguard_now(p_now);
    v bigint;
BEGIN
    -- The log row first, as put_budget does: one lock order, no deadlock.
    PERFORM 1 FROM __schema__.budgetguard_budget_log WHERE id = 1 FOR UPDATE;
    PERFORM 1 FROM __schema__.budgetguard_budgets b
    WHERE b.name = p_name AND b.definition IS NOT NULL FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE __schema__.budgetguard_budget_log SET version = version + 1
    WHERE id = 1 RETURNING version INTO v;
    UPDATE __schema__.budgetguard_budgets
    SET definition = NULL, version = v, changed_at = now WHERE name = p_name;
    PERFORM __schema__.budgetguard_forget(now);
    RETURN true;
END
$$;
"""

# Version 2: holds with a unit, a soft over key, or a sliding window (a prior
# key counted at a weight), and settle amounts per hold. The new columns are
# NULL for reservations whose holds are all plain (version 1's rows, and the
# common case), so the hot path writes no more than before. The version 1
# reserve and settle stay as overloads (their arguments differ), so a process
# still running the older budgetguard keeps working until it restarts; open
# changes its result columns, so it is replaced.
_V2 = r"""
ALTER TABLE __schema__.budgetguard_reservations
    ADD COLUMN units smallint[],
    ADD COLUMN overs text[],
    ADD COLUMN priors text[],
    ADD COLUMN weights integer[];

-- Charge each key its own amount (amounts of a key named twice add up); rows locked.
CREATE FUNCTION __schema__.budgetguard_charge_each(p_keys text[], p_amounts bigint[])
RETURNS void LANGUAGE sql AS $$
    UPDATE __schema__.budgetguard_counters c
    SET spent = c.spent + d.total
    FROM (SELECT h.k, sum(h.a) AS total FROM unnest(p_keys, p_amounts) AS h(k, a) GROUP BY h.k) d
    WHERE c.key = d.k
$$;

-- status -1: the id was used before; 0: held; 1: refused at hold o_index
-- (o_prior: the part of the prior window's spend it counted). A soft hold
-- (p_overs[i] set) that does not fit is held anyway and adds 1 to the spent
-- of p_overs[i]; a prior key (p_priors[i]) is only read, never locked.
CREATE FUNCTION __schema__.budgetguard_reserve(
    p_id text, p_keys text[], p_limits bigint[], p_amounts bigint[],
    p_units smallint[], p_overs text[], p_priors text[], p_weights integer[],
    p_expires double precision, p_now double precision, p_ttl double precision,
    OUT o_status int, OUT o_index int, OUT o_spent bigint, OUT o_reserved bigint,
    OUT o_prior bigint
) LANGUAGE plpgsql AS $$
DECLARE
    now double precision := __schema__.budgetguard_now(p_now);
    over_keys text[] := coalesce(array_remove(p_overs, NULL), '{}');
    missed text[] := '{}';
    spent_now bigint;
    reserved_now bigint;
    part bigint;
BEGIN
    INSERT INTO __schema__.budgetguard_reservations
        (id, state, keys, limits, amounts, units, overs, priors, weights, expires_at)
    VALUES (p_id, 0, p_keys, p_limits, p_amounts, p_units, p_overs, p_priors, p_weights,
            p_expires)
    ON CONFLICT (id) DO NOTHING;
    IF NOT FOUND THEN
        o_status := -1;
        RETURN;
    END IF;
    PERFORM __schema__.budgetguard_expire(now, p_keys || over_keys, p_id);
    -- Every hold is checked against the balances before this reservation.
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        CONTINUE WHEN p_limits[i] IS NULL;
        SELECT c.spent, c.reserved INTO spent_now, reserved_now
        FROM __schema__.budgetguard_counters c WHERE c.key = p_keys[i];
        part := 0;
        IF p_priors[i] IS NOT NULL THEN
            SELECT div(c.spent::numeric * p_weights[i], 1000000)::bigint INTO part
            FROM __schema__.budgetguard_counters c WHERE c.key = p_priors[i];
            part := coalesce(part, 0);
        END IF;
        IF spent_now::numeric + reserved_now + part + p_amounts[i] > p_limits[i]
           OR (p_amounts[i] = 0 AND spent_now::numeric + reserved_now + part >= p_limits[i])
        THEN
            IF p_overs[i] IS NOT NULL THEN
                missed := missed || p_overs[i];
                CONTINUE;
            END IF;
            -- A refusal changes nothing: the id stays unused, no miss is counted.
            DELETE FROM __schema__.budgetguard_reservations WHERE id = p_id;
            DELETE FROM __schema__.budgetguard_counters c
            WHERE c.key = ANY (p_keys || over_keys) AND c.spent = 0 AND c.reserved = 0;
            o_status := 1;
            o_index := i - 1;
            o_spent := spent_now;
            o_reserved := reserved_now;
            o_prior := part;
            RETURN;
        END IF;
    END LOOP;
    PERFORM __schema__.budgetguard_hold(p_keys, p_amounts, 1);
    IF cardinality(missed) > 0 THEN
        PERFORM __schema__.budgetguard_charge(missed, 1);
    END IF;
    PERFORM __schema__.budgetguard_prune(now, p_ttl);
    o_status := 0;
END
$$;

-- Charge p_keys[i] p_charges[i] (the held keys by their units, then the
-- tallies; zero charges left out by the caller). True if this call charged;
-- false if the id was settled before.
CREATE FUNCTION __schema__.budgetguard_settle(
    p_id text, p_keys text[], p_charges bigint[], p_now double precision
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    now double precision := __schema__.budgetguard_now(p_now);
    old_state smallint;
    held_keys text[];
    held_amounts bigint[];
BEGIN
    LOOP
        SELECT r.state, r.keys, r.amounts INTO old_state, held_keys, held_amounts
        FROM __schema__.budgetguard_reservations r WHERE r.id = p_id FOR UPDATE;
        EXIT WHEN FOUND;
        INSERT INTO __schema__.budgetguard_reservations
            (id, state, keys, limits, amounts, expires_at, ended_at)
        VALUES (p_id, 1, '{}', '{}', '{}', now, now) ON CONFLICT (id) DO NOTHING;
        IF FOUND THEN  -- never reserved here: the money was still spent
            old_state := NULL;
            EXIT;
        END IF;
    END LOOP;
    IF old_state = 1 THEN
        RETURN false;
    END IF;
    IF old_state IS NOT NULL THEN
        UPDATE __schema__.budgetguard_reservations SET state = 1, ended_at = now WHERE id = p_id;
    END IF;
    IF old_state IS DISTINCT FROM 0 THEN  -- released or expired: holds already dropped
        held_keys := '{}';
        held_amounts := '{}';
    END IF;
    PERFORM __schema__.budgetguard_lock(held_keys || p_keys);
    PERFORM __schema__.budgetguard_hold(held_keys, held_amounts, -1);
    PERFORM __schema__.budgetguard_charge_each(p_keys, p_charges);
    RETURN true;
END
$$;

DROP FUNCTION __schema__.budgetguard_open(double precision);
CREATE FUNCTION __schema__.budgetguard_open(p_now double precision)
RETURNS TABLE (
    o_id text, o_keys text[], o_limits bigint[], o_amounts bigint[], o_expires double precision,
    o_units smallint[], o_overs text[], o_priors text[], o_weights integer[]
) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM __schema__.budgetguard_expire(__schema__.budgetguard_now(p_now), '{}', NULL);
    RETURN QUERY
        SELECT r.id::text, r.keys, r.limits, r.amounts, r.expires_at,
               r.units, r.overs, r.priors, r.weights
        FROM __schema__.budgetguard_reservations r WHERE r.state = 0
        ORDER BY r.expires_at, r.id;
END
$$;
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2)
SCHEMA_VERSION = len(MIGRATIONS)
