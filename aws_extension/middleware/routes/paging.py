"""Page sizes of the list routes (API.md: `?limit=` default 100, at most 1000; `?last_key=` the last record's
id). Every list route answers one page: a whole-table read would make a request's cost grow with the table."""

LIST_PAGE = 100
LIST_PAGE_MAX = 1000
