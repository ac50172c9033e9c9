package cli

import "strconv"

// ExitError asks main to exit with Code, after printing Err unless it is nil
// (the command already reported).
type ExitError struct {
	// Code is the process exit code.
	Code int
	// Err is printed when not nil.
	Err error
}

func (e ExitError) Error() string {
	if e.Err == nil {
		return "exit status " + strconv.Itoa(e.Code)
	}
	return e.Err.Error()
}
