-- Bulk import speed (issue 5): a cheaper address key, and list membership
-- without per-row foreign key triggers. BENCHMARKS.md's Import section has
-- the measurements behind each change.

-- 1. The unique address key compares bytes (COLLATE "C") instead of going
--    through the database's libc collation: sorting and merging an import's
--    addresses and inserting them into the index cost less, and equality is
--    the same (lower-cased UTF-8 either way). Queries that look a contact up
--    by address, or infer ON CONFLICT from this index, must spell the
--    expression the same way: lower(email) COLLATE "C".
CREATE UNIQUE INDEX contacts_email_key_c ON contacts ((lower(email) COLLATE "C"));
DROP INDEX contacts_email_key;
ALTER INDEX contacts_email_key_c RENAME TO contacts_email_key;

-- 2. list_members loses its two foreign keys. Each fired one RI trigger per
--    inserted row (a SELECT ... FOR KEY SHARE of the list row and of the
--    contact row, which also dirtied every freshly written contacts page):
--    about 60 % of a 1M-row import. The same guarantees now come from
--    statement-level triggers that work on whole sets:
--      - inserting or updating members checks, once per statement, that
--        every list_id and contact_id exists (one anti-join over the
--        statement's new rows);
--      - deleting or truncating contacts or lists deletes their members
--        (ON DELETE CASCADE as before), after locking list_members in SHARE
--        ROW EXCLUSIVE mode: that waits for any transaction still adding
--        members (which holds ROW EXCLUSIVE), so a member added concurrently
--        to a contact being deleted is either seen and deleted by the
--        cascade or, added later, fails the insert check. This lock is what
--        the RI trigger's row lock did, taken once per statement;
--      - ids are identities and may not be changed while referenced.
--    The contact_id index served only the cascade; a contact delete now
--    scans list_members once per statement (deletes are rare: nothing in
--    blaster deletes contacts), and an import writes one index fewer.
ALTER TABLE list_members
    DROP CONSTRAINT list_members_list_id_fkey,
    DROP CONSTRAINT list_members_contact_id_fkey;
DROP INDEX list_members_contact;

-- The check is two anti-joins over the statement's new rows: their distinct
-- list ids against lists, and their contact ids against contacts (a hash or
-- index anti-join, as the planner finds cheaper for the number of rows the
-- statement added, which it knows).
CREATE FUNCTION list_members_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing bigint;
BEGIN
    SELECT n.list_id INTO missing
      FROM (SELECT DISTINCT list_id FROM new_members) n
     WHERE NOT EXISTS (SELECT 1 FROM lists l WHERE l.id = n.list_id)
     LIMIT 1;
    IF FOUND THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('list_members: list %s does not exist', missing),
            TABLE = 'list_members', COLUMN = 'list_id';
    END IF;
    SELECT n.contact_id INTO missing
      FROM new_members n
     WHERE NOT EXISTS (SELECT 1 FROM contacts c WHERE c.id = n.contact_id)
     LIMIT 1;
    IF FOUND THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('list_members: contact %s does not exist', missing),
            TABLE = 'list_members', COLUMN = 'contact_id';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER list_members_check_insert AFTER INSERT ON list_members
    REFERENCING NEW TABLE AS new_members
    FOR EACH STATEMENT EXECUTE FUNCTION list_members_check();
CREATE TRIGGER list_members_check_update AFTER UPDATE ON list_members
    REFERENCING NEW TABLE AS new_members
    FOR EACH STATEMENT EXECUTE FUNCTION list_members_check();

-- Taken before a delete of contacts or lists: see 2. above.
CREATE FUNCTION list_members_lock() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    LOCK TABLE list_members IN SHARE ROW EXCLUSIVE MODE;
    RETURN NULL;
END $$;

CREATE FUNCTION list_members_cascade() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        TRUNCATE list_members;
    ELSIF TG_TABLE_NAME = 'contacts' THEN
        DELETE FROM list_members m USING old_rows o WHERE m.contact_id = o.id;
    ELSE
        DELETE FROM list_members m USING old_rows o WHERE m.list_id = o.id;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION list_members_keep_id() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE foreign_key_violation USING
        MESSAGE = format('%s: id %s cannot change (list_members refer to ids)', TG_TABLE_NAME, OLD.id);
END $$;

-- The same four triggers on contacts and on lists.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['contacts', 'lists'] LOOP
        EXECUTE format('CREATE TRIGGER list_members_lock BEFORE DELETE ON %I
            FOR EACH STATEMENT EXECUTE FUNCTION list_members_lock()', t);
        EXECUTE format('CREATE TRIGGER list_members_cascade AFTER DELETE ON %I
            REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION list_members_cascade()', t);
        EXECUTE format('CREATE TRIGGER list_members_truncate AFTER TRUNCATE ON %I
            FOR EACH STATEMENT EXECUTE FUNCTION list_members_cascade()', t);
        EXECUTE format('CREATE TRIGGER list_members_keep_id BEFORE UPDATE OF id ON %I
            FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION list_members_keep_id()', t);
    END LOOP;
END $$;
