/* An intrusive circular doubly-linked list (libuv's QUEUE, with names).
 * A node is in at most one list; an unlinked node points at itself, so
 * stoke_list_remove() is safe to call twice. */
#ifndef STOKE_LIST_H
#define STOKE_LIST_H

#include <stdbool.h>

struct stoke_list {
    struct stoke_list *next, *prev;
};

static inline void stoke_list_init(struct stoke_list *l)
{
    l->next = l->prev = l;
}

static inline bool stoke_list_empty(const struct stoke_list *l)
{
    return l->next == l;
}

static inline void stoke_list_insert_tail(struct stoke_list *head, struct stoke_list *n)
{
    n->prev = head->prev;
    n->next = head;
    head->prev->next = n;
    head->prev = n;
}

static inline void stoke_list_remove(struct stoke_list *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    stoke_list_init(n);
}

#define stoke_list_first(head) ((head)->next)

#endif
