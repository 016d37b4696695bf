-- Fan-out speed (issue 7: start 1,000,000 recipients in under 15 s).
-- deliveries loses its two foreign keys. Each fired one RI trigger per
-- inserted row (a SELECT ... FOR KEY SHARE of the campaign row and of the
-- contact row): at 1M recipients they were most of `campaign start`'s time
-- (BENCHMARKS.md, "End to end"). The same guarantees come from
-- statement-level triggers that work on whole sets, as list_members' do
-- since migration 0004:
--   - inserting deliveries checks, once per statement, that every
--     campaign_id and contact_id exists (anti-joins over the statement's new
--     rows), and a delivery's key (campaign_id, contact_id) cannot change;
--   - deleting or truncating campaigns deletes their deliveries (ON DELETE
--     CASCADE as before);
--   - deleting or truncating contacts that have deliveries is refused (the
--     ledger keeps who was sent what: NO ACTION as before). Inserting
--     deliveries takes a shared transaction-level advisory lock (key
--     'blaster.deliveries.insert', in deliveries_check), a contact delete
--     the exclusive one before it deletes: the delete waits for any
--     fan-out in flight to commit and then sees its rows and fails, and a
--     fan-out that inserts after the delete checks after it and fails.
--     Workers' updates of deliveries take no such lock, so a delete (which
--     scans deliveries for the contact) never stalls them; concurrent
--     fan-outs share the lock. Nothing in blaster deletes contacts.
--   - contact ids (migration 0004's triggers) and campaign ids cannot change.
ALTER TABLE deliveries
    DROP CONSTRAINT deliveries_campaign_id_fkey,
    DROP CONSTRAINT deliveries_contact_id_fkey;

CREATE FUNCTION deliveries_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing bigint;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtextextended('blaster.deliveries.insert', 0));
    SELECT n.campaign_id INTO missing
      FROM (SELECT DISTINCT campaign_id FROM new_deliveries) n
     WHERE NOT EXISTS (SELECT 1 FROM campaigns c WHERE c.id = n.campaign_id)
     LIMIT 1;
    IF FOUND THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('deliveries: campaign %s does not exist', missing),
            TABLE = 'deliveries', COLUMN = 'campaign_id';
    END IF;
    SELECT n.contact_id INTO missing
      FROM new_deliveries n
     WHERE NOT EXISTS (SELECT 1 FROM contacts c WHERE c.id = n.contact_id)
     LIMIT 1;
    IF FOUND THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('deliveries: contact %s does not exist', missing),
            TABLE = 'deliveries', COLUMN = 'contact_id';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER deliveries_check_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_check();
-- A delivery's key never changes (the ledger row is that campaign x that
-- contact). The trigger fires only for UPDATEs that set a key column, so a
-- worker's outcome writes, which set neither, pay nothing for it.
CREATE FUNCTION deliveries_keep_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE foreign_key_violation USING
        MESSAGE = format('deliveries: the key (campaign %s, contact %s) cannot change', OLD.campaign_id, OLD.contact_id);
END $$;
CREATE TRIGGER deliveries_keep_key BEFORE UPDATE OF campaign_id, contact_id ON deliveries
    FOR EACH ROW WHEN (OLD.campaign_id IS DISTINCT FROM NEW.campaign_id OR OLD.contact_id IS DISTINCT FROM NEW.contact_id)
    EXECUTE FUNCTION deliveries_keep_key();

CREATE FUNCTION deliveries_lock() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('blaster.deliveries.insert', 0));
    RETURN NULL;
END $$;

CREATE FUNCTION deliveries_of_campaigns_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- DELETE, not TRUNCATE: a TRUNCATE naming deliveries too (as
        -- `TRUNCATE deliveries, campaigns`) may not truncate it again here,
        -- and has emptied it already.
        DELETE FROM deliveries;
    ELSE
        DELETE FROM deliveries d USING old_rows o WHERE d.campaign_id = o.id;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION deliveries_of_contacts_restrict() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    used bigint;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        SELECT contact_id INTO used FROM deliveries LIMIT 1;
    ELSE
        SELECT d.contact_id INTO used FROM deliveries d JOIN old_rows o ON d.contact_id = o.id LIMIT 1;
    END IF;
    IF FOUND THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('contacts: contact %s has deliveries (the ledger keeps them); delete its campaigns first', used),
            TABLE = 'deliveries', COLUMN = 'contact_id';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER deliveries_lock BEFORE DELETE ON contacts
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_lock();
CREATE TRIGGER deliveries_lock_truncate BEFORE TRUNCATE ON contacts
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_lock();
CREATE TRIGGER deliveries_restrict AFTER DELETE ON contacts
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_of_contacts_restrict();
CREATE TRIGGER deliveries_restrict_truncate AFTER TRUNCATE ON contacts
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_of_contacts_restrict();

CREATE TRIGGER deliveries_cascade AFTER DELETE ON campaigns
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_of_campaigns_delete();
CREATE TRIGGER deliveries_cascade_truncate AFTER TRUNCATE ON campaigns
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_of_campaigns_delete();

CREATE FUNCTION campaigns_keep_id() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE foreign_key_violation USING
        MESSAGE = format('campaigns: id %s cannot change (deliveries refer to it)', OLD.id);
END $$;
CREATE TRIGGER campaigns_keep_id BEFORE UPDATE OF id ON campaigns
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION campaigns_keep_id();
