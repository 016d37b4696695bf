package main

import (
	"github.com/spf13/cobra"

	"github.com/blaster-mail/blaster/db"
)

func newMigrateCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Apply River's and blaster's schema migrations (idempotent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pool, err := a.db(cmd.Context())
			if err != nil {
				return err
			}
			return db.Migrate(cmd.Context(), pool, a.stdout)
		},
	}
}
