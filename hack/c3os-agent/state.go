package main

// What the agent keeps across reboots, in one 0600 file of a 0700 directory: the host's
// credential (the endpoint stores only its digest, so losing it means registering
// again) and which claim was installed, so the installed system reports it booted.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

type state struct {
	Namespace  string `json:"namespace"`
	Name       string `json:"name"`
	Credential string `json:"credential"`
	// Installed: the claim whose install finished here; the next start (the installed
	// system's first boot) reports it booted.
	Installed string `json:"installed,omitempty"`
}

const stateFile = "state.json"

func loadState(dir string) (state, error) {
	var st state
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(data, &st); err != nil {
		// A torn or foreign file: start over by registering (the token still works).
		return state{}, nil
	}
	return st, nil
}

// save writes the state crash-safely: a temporary file made 0600 before anything is
// written into it, synced, then renamed over the old one.
func (st state) save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".state-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, stateFile)); err != nil {
		return fmt.Errorf("saving the state: %w", err)
	}
	if d, err := os.Open(dir); err == nil { // the rename itself survives a power cut
		d.Sync()
		d.Close()
	}
	return nil
}
