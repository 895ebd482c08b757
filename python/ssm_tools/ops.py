def selective_scan(*a, **k): raise NotImplementedError
def selective_state_update(*a, **k): raise NotImplementedError
