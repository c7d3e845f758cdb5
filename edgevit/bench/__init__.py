"""``edgevit bench``: measurements of a bundle's engines beside a torch baseline from the same run."""
