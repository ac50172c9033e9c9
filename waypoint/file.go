package waypoint

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
)

// LoadConfig reads a Config from JSON: the pkg/model and pkg/policy field
// names, durations in nanoseconds (encoding/json's time.Duration). Unknown
// fields are an error, so a typo is not silently ignored. The config is
// validated when given to New or Update.
func LoadConfig(r io.Reader) (*Config, error) {
	dec := json.NewDecoder(io.LimitReader(r, 64<<20))
	dec.DisallowUnknownFields()
	var cfg Config
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("decode waypoint config: %w", err)
	}
	if cfg.L7 == nil {
		return nil, fmt.Errorf("decode waypoint config: no L7 section")
	}
	return &cfg, nil
}

// LoadConfigFile is LoadConfig on a file.
func LoadConfigFile(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open waypoint config: %w", err)
	}
	defer f.Close()
	cfg, err := LoadConfig(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// ConfigFromJSON builds a Config from the two JSON documents meshd sends in
// a WaypointConfig (pkg/xds): the model.L7Config and the policies that
// target the waypoint. Unknown fields are ignored here, as protobuf does, so
// that a newer meshd can add fields; the result is validated by New or
// Update, and a config that fails there should be NACKed.
func ConfigFromJSON(l7JSON, policiesJSON []byte) (*Config, error) {
	var cfg Config
	if err := json.Unmarshal(l7JSON, &cfg.L7); err != nil {
		return nil, fmt.Errorf("decode waypoint L7 config: %w", err)
	}
	if cfg.L7 == nil {
		return nil, fmt.Errorf("decode waypoint L7 config: empty")
	}
	if len(policiesJSON) > 0 {
		if err := json.Unmarshal(policiesJSON, &cfg.Policies); err != nil {
			return nil, fmt.Errorf("decode waypoint policies: %w", err)
		}
	}
	return &cfg, nil
}
