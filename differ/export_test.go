package differ

// AheadStaged counts the blobs unpacked ahead and not yet taken.
func AheadStaged(s *Service) (done int) {
	s.ahead.mu.Lock()
	defer s.ahead.mu.Unlock()
	for u := range s.ahead.all {
		select {
		case <-u.done:
			if u.err == nil && !u.taken {
				done++
			}
		default:
		}
	}
	return done
}
