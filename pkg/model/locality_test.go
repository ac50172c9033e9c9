package model

import (
	"strings"
	"testing"
)

func TestMatchLocality(t *testing.T) {
	loc := Locality{Region: "west", Zone: "a", Subzone: "rack1"}
	for _, tt := range []struct {
		pattern string
		want    bool
	}{
		{"*", true}, {"west", true}, {"west/*", true}, {"west/a", true}, {"west/a/*", true}, {"west/a/rack1", true},
		{"*/a", true}, {"east", false}, {"west/b", false}, {"west/a/rack2", false}, {"*/b/*", false},
	} {
		if got := MatchLocality(tt.pattern, loc); got != tt.want {
			t.Errorf("MatchLocality(%q, west/a/rack1) = %v; want %v", tt.pattern, got, tt.want)
		}
	}
	if MatchLocality("west", Locality{}) || !MatchLocality("*", Locality{}) {
		t.Error("an unknown locality matches only \"*\"")
	}
	if got := ParseLocality("west/a"); got != (Locality{Region: "west", Zone: "a"}) || got.String() != "west/a/" {
		t.Errorf("ParseLocality(west/a) = %+v (%q); want region west, zone a", got, got.String())
	}
}

func TestLocalityLBValidate(t *testing.T) {
	for _, tt := range []struct {
		name string
		lb   LocalityLB
		err  string // "" for valid
	}{
		{"distribute", LocalityLB{Distribute: []LocalityDistribute{{From: "west/a/*", To: map[string]uint32{"west/a/*": 80, "west/b/*": 20}}}}, ""},
		{"failover", LocalityLB{Priority: LocalityPriority, Failover: []LocalityFailover{{From: "west", To: "east"}}}, ""},
		{"weights not 100", LocalityLB{Distribute: []LocalityDistribute{{From: "west", To: map[string]uint32{"west": 60, "east": 30}}}}, "add up to 90"},
		{"both", LocalityLB{Distribute: []LocalityDistribute{{From: "west", To: map[string]uint32{"west": 100}}}, Failover: []LocalityFailover{{From: "west", To: "east"}}}, "cannot be combined"},
		{"bad pattern", LocalityLB{Distribute: []LocalityDistribute{{From: "west/a*", To: map[string]uint32{"west": 100}}}}, "west/a*"},
		{"empty part", LocalityLB{Distribute: []LocalityDistribute{{From: "west//a", To: map[string]uint32{"west": 100}}}}, "west//a"},
		{"failover to itself", LocalityLB{Failover: []LocalityFailover{{From: "west", To: "west"}}}, "two different regions"},
		{"failover to a zone", LocalityLB{Failover: []LocalityFailover{{From: "west", To: "east/a"}}}, "two different regions"},
		{"unknown key", LocalityLB{Priority: []string{"rack"}}, `"rack"`},
	} {
		err := tt.lb.Validate()
		if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("%s: Validate() = %v; want %q", tt.name, err, tt.err)
		}
	}
}
