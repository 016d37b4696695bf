package worker

import (
	"context"
	"errors"
	"fmt"
	"net/mail"
	"os"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/message"
)

// compiled is a campaign with its parsed templates.
type compiled struct {
	c        *campaign.Campaign
	tmpl     *message.Template
	envFrom  string // bare From address, the envelope's reverse path
	listName string
	dir      string // the campaign's attachments, under the worker's spool

	ready chan struct{} // closed when the fields above are set, or err
	err   error

	users   int  // batches using it; guarded by sendWorker.mu
	evicted bool // no longer cached: closed by its last user
}

// campaign returns the campaign with its parsed templates, cached. The
// first batch of a campaign compiles it (reading it, copying its
// attachments); its other batches wait for that rather than doing it too.
// The caller must release it.
func (w *sendWorker) campaign(ctx context.Context, id int64) (*compiled, error) {
	w.mu.Lock()
	cc := w.campaigns[id]
	if cc == nil {
		cc = &compiled{ready: make(chan struct{}), users: 1}
		w.campaigns[id] = cc
		w.mu.Unlock()
		cc.err = w.compile(ctx, id, cc)
		if cc.err != nil {
			w.mu.Lock()
			if w.campaigns[id] == cc {
				delete(w.campaigns, id) // the next batch tries again
			}
			w.mu.Unlock()
		}
		close(cc.ready)
	} else {
		cc.users++
		w.mu.Unlock()
		select {
		case <-cc.ready:
		case <-ctx.Done():
			w.release(cc)
			return nil, ctx.Err()
		}
	}
	if cc.err != nil {
		w.release(cc)
		return nil, cc.err
	}
	return cc, nil
}

// release ends a batch's use of cc; an evicted campaign's files go with
// its last user.
func (w *sendWorker) release(cc *compiled) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if cc.users--; cc.users == 0 && cc.evicted {
		cc.close()
	}
}

// forgetFinished drops the cached campaigns that are done or cancelled
// (their spool copies with them, once no batch uses them): a long-running
// worker keeps only what it may still send. A campaign retried later is
// compiled again; a cancelled one is final.
func (w *sendWorker) forgetFinished(ctx context.Context) error {
	w.mu.Lock()
	ids := make([]int64, 0, len(w.campaigns))
	for id := range w.campaigns {
		ids = append(ids, id)
	}
	w.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	rows, err := w.pool.Query(ctx, `SELECT id FROM campaigns WHERE id = ANY($1) AND state IN ('done', 'cancelled')`, ids)
	if err != nil {
		return fmt.Errorf("reading finished campaigns: %w", err)
	}
	done, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return fmt.Errorf("reading finished campaigns: %w", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, id := range done {
		cc := w.campaigns[id]
		if cc == nil {
			continue
		}
		delete(w.campaigns, id)
		if cc.evicted = true; cc.users == 0 {
			cc.close()
		}
	}
	return nil
}

// compile reads campaign id into cc: its row, its templates, and its
// attachments copied into the spool directory.
func (w *sendWorker) compile(ctx context.Context, id int64, cc *compiled) error {
	c, err := campaign.Get(ctx, w.pool, id)
	if errors.Is(err, campaign.ErrNotFound) {
		return river.JobCancel(err)
	}
	if err != nil {
		return err
	}
	mc, err := c.Content(w.secrets)
	if err != nil {
		return river.JobCancel(fmt.Errorf("campaign %d: %w", id, err))
	}
	cc.c, cc.listName, cc.envFrom = c, c.ListName, c.From
	if a, err := mail.ParseAddress(c.From); err == nil {
		cc.envFrom = a.Address
	}
	if cc.dir, err = os.MkdirTemp(w.spool.path, fmt.Sprintf("campaign-%d-", id)); err != nil {
		return fmt.Errorf("campaign %d: %w", id, err)
	}
	// Copied once per campaign and process, streamed into every message.
	if mc.Files, err = campaign.Materialize(ctx, w.pool, id, cc.dir); err != nil {
		os.RemoveAll(cc.dir)
		return err
	}
	if cc.tmpl, err = message.Parse(mc, message.WithSpool(w.spool.path, w.spoolOver)); err != nil {
		os.RemoveAll(cc.dir)
		return river.JobCancel(fmt.Errorf("campaign %d: %w", id, err))
	}
	return nil
}

// close drops the campaign's shared messages and attachment copies.
func (cc *compiled) close() {
	<-cc.ready
	if cc.err == nil {
		cc.tmpl.Close()
		os.RemoveAll(cc.dir)
	}
}

// closeSpool drops every compiled campaign and removes the spool
// directory; the worker calls it once no batch runs.
func (w *sendWorker) closeSpool() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for id, cc := range w.campaigns {
		cc.close()
		delete(w.campaigns, id)
	}
	return w.spool.remove()
}
